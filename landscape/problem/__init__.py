"""What is analysed: a model, a loss, the data, the parameters of interest and the BatchNorm/dropout policy
(:class:`Problem`, in :mod:`landscape.problem.core`); its batches (:mod:`~landscape.problem.batches`) and the guards
on its evaluations (:mod:`~landscape.problem.guards`)."""

from landscape.problem.batches import DataError, PreparedBatch, normalise_data
from landscape.problem.core import MODES, Problem, check_problem
from landscape.problem.guards import (
    NonDeterministicError,
    ParamDict,
    changed_in_place,
    check_finite,
    versions,
    warn_unused,
)

__all__ = [
    "MODES",
    "DataError",
    "NonDeterministicError",
    "ParamDict",
    "PreparedBatch",
    "Problem",
    "changed_in_place",
    "check_finite",
    "check_problem",
    "normalise_data",
    "versions",
    "warn_unused",
]
