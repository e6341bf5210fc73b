"""Helpers shared by the surface tests."""

from __future__ import annotations

from landscape import Problem


def case_problem(case) -> Problem:
    """The Problem of a test case of ``tests.conftest.make_case`` (its model, loss, batches, selection and mode)."""
    return Problem(case.model, case.loss_fn, case.batches(), params=case.params, mode=case.mode)
