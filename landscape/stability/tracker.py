"""Sharpness against the optimizer's stability threshold during training: :class:`EdgeOfStabilityTracker`."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape._checks import check_int, generator, seed_int
from landscape.cache import Cache
from landscape.linalg import top_eigen
from landscape.operators import hessian
from landscape.operators.transformed import Transformed
from landscape.problem import Problem, check_problem
from landscape.stability.rules import Rule, resolve_rule, rule_from_torch

__all__ = ["TRACKED_RULES", "EdgeOfStabilityTracker"]

TRACKED_RULES = ("gd", "heavy_ball", "nesterov", "adam", "adamw")


class EdgeOfStabilityTracker:
    """A training-loop callback recording sharpness against the optimizer's stability threshold every ``every`` steps.

    Under full-batch gradient descent the top Hessian eigenvalue rises during training (progressive sharpening)
    until it reaches ``2/lr``, then hovers there while the loss keeps decreasing non-monotonically (Cohen, Kaur, Li,
    Kolter, Talwalkar, "Gradient descent on neural networks typically occurs at the edge of stability", ICLR 2021);
    with momentum the threshold is ``(2 + 2 beta)/lr`` (heavy ball) or ``(2 + 2 beta)/((1 + 2 beta) lr)``
    (Nesterov), and Adam's *preconditioned* sharpness ``lambda_max(P^-1 H)`` settles at ``(2 + 2 beta1)/((1 -
    beta1) lr)`` (Cohen et al. 2022). Each record evaluates the full-data loss and the top ``k`` eigenvalues of the
    Hessian by Lanczos (:func:`landscape.linalg.top_eigen`) started from the previous record's eigenvectors: the
    sharpness changes little between records, so a warm start needs a few Hessian-vector products where a random
    start needs tens. The optimizer's current learning rate and momentum are read at every record (schedules are
    followed); for Adam the preconditioner ``sqrt(v / (1 - beta2^t)) + eps`` comes from its state.

    The model, its mode, its ``.grad`` fields and the optimizer are only read; random starts come from a local
    generator.

    Parameters
    ----------
    problem : Problem
        The loss whose Hessian is tracked (typically the full training set, or a fixed subset of it); it reads the
        model's parameters at each record.
    optimizer : torch.optim.SGD, Adam, AdamW, or str
        The optimizer of the training loop, or ``"gd"``/``"heavy_ball"``/``"nesterov"`` with ``lr=`` (and
        ``momentum=``) for a loop without a ``torch.optim`` object.
    every : int
        Record when ``step % every == 0``.
    k : int
        Number of top eigenvalues recorded.
    path : str or PathLike, optional
        HDF5 file (a :class:`landscape.cache.Cache`) rewritten after every record, under ``key``.
    key : str
        Entry name in the cache file.
    lr, momentum, nesterov : for a string optimizer.
    tol : float
        Relative Ritz residual tolerance of Lanczos.
    max_matvecs : int, optional
        Lanczos budget per record.
    warm_start : bool
        Start Lanczos from the previous eigenvectors (``False``: a fresh random start every record).
    seed : int or torch.Generator
        Seed of the local generator for random starts (a ``torch.Generator`` gives the ``int`` seed, one draw from
        it, which the settings record).
    """

    def __init__(
        self,
        problem: Problem,
        optimizer: str | torch.optim.Optimizer,
        *,
        every: int = 10,
        k: int = 1,
        path: str | os.PathLike[str] | None = None,
        key: str = "edge_of_stability",
        lr: float | None = None,
        momentum: float = 0.0,
        nesterov: bool = False,
        tol: float = 1e-3,
        max_matvecs: int | None = None,
        warm_start: bool = True,
        seed: int | torch.Generator = 0,
    ):
        check_problem(problem)
        every = check_int("every", every, 1, "steps between records")
        k = check_int("k", k, 1, "top eigenvalues recorded")
        if k > problem.num_params:
            raise ValueError(f"k must be an int in [1, {problem.num_params}], got {k!r}")
        if isinstance(optimizer, str) and optimizer.lower() not in ("gd", "sgd", "heavy_ball", "momentum", "nesterov"):
            raise ValueError(
                f"a string optimizer must be 'gd', 'sgd', 'heavy_ball' or 'nesterov' (got {optimizer!r}); for Adam "
                "pass the torch.optim.Adam instance, whose state holds the preconditioner"
            )
        if not isinstance(optimizer, (str, torch.optim.SGD, torch.optim.Adam)):
            raise TypeError(f"optimizer must be torch.optim.SGD, Adam, AdamW or a string, got {type(optimizer)}")
        self.problem = problem
        self.optimizer = optimizer
        self.every = every
        self.k = k
        self.path = path
        self.key = key
        self.tol = float(tol)
        self.max_matvecs = max_matvecs
        self.warm_start = bool(warm_start)
        self.seed = seed_int(seed)
        self._string = {"lr": lr, "momentum": momentum, "nesterov": nesterov}
        self._gen = generator(self.seed)
        self._vectors: Tensor | None = None
        self._pre_vector: Tensor | None = None
        self._records: list[dict[str, Any]] = []
        self._rule_kind: str | None = None
        first = self._rule()
        if first is not None and first.kind not in TRACKED_RULES:
            raise ValueError(f"cannot track {first.kind}")
        self._rule_kind = None if first is None else first.kind

    def _rule(self) -> Rule | None:
        """The update rule now; ``None`` for an Adam without state (no step taken yet)."""
        if isinstance(self.optimizer, str):
            s = self._string
            return resolve_rule(
                self.problem,
                self.optimizer,
                s["lr"],
                momentum=s["momentum"],
                nesterov=s["nesterov"],
                dampening=0.0,
                betas=(0.9, 0.999),
                eps=1e-8,
                weight_decay=0.0,
                preconditioner=None,
                adam_state=None,
                rho=None,
                sam="normalized",
            )
        try:
            return rule_from_torch(self.problem, self.optimizer, None, None, None)
        except ValueError as err:
            if "no state" in str(err):
                return None
            raise

    def step(self, step: int) -> dict[str, Any] | None:
        """Record if ``step % every == 0``; returns the record or ``None``."""
        if step % self.every:
            return None
        return self.record(step)

    __call__ = step

    def record(self, step: int) -> dict[str, Any]:
        """Evaluate loss, sharpness and threshold now, whatever the step."""
        start = time.perf_counter()
        rule = self._rule()
        if rule is not None:
            self._rule_kind = rule.kind
        loss = self.problem.loss()
        op = hessian(self.problem, engine="double_backward")
        v0 = self._vectors if self.warm_start else None
        res = top_eigen(op, self.k, tol=self.tol, max_matvecs=self.max_matvecs, v0=v0, seed=self._gen)
        self._vectors = res.vectors.detach().clone()
        matvecs = int(op.num_matvecs)
        pre_value, pre_matvecs = math.nan, 0
        if rule is not None and rule.kind in ("adam", "adamw"):
            pop = hessian(self.problem, engine="double_backward")
            wd = rule.weight_decay if rule.kind == "adam" else 0.0
            scaled = Transformed(pop, scale=rule.preconditioner.rsqrt(), shift=wd)
            v0 = self._pre_vector if self.warm_start else None
            pres = top_eigen(scaled, 1, tol=self.tol, max_matvecs=self.max_matvecs, v0=v0, seed=self._gen)
            self._pre_vector = pres.vectors.detach().clone()
            pre_value, pre_matvecs = float(pres.values[0]), int(pop.num_matvecs)
        if rule is None:
            threshold, lr = math.nan, math.nan
        elif rule.kind in ("adam", "adamw"):
            threshold, lr = rule.threshold(rule.lr), rule.lr
        else:
            # The threshold applies to lambda_max(H + wd I): report it for lambda_max(H).
            threshold, lr = rule.threshold(rule.lr) - rule.weight_decay, rule.lr
        relevant = pre_value if rule is not None and rule.kind in ("adam", "adamw") else float(res.values[0])
        rec = {
            "step": int(step),
            "loss": float(loss),
            "sharpness": np.asarray(res.values, dtype=np.float64),
            "residuals": np.asarray(res.residuals, dtype=np.float64),
            "converged": np.asarray(res.converged, dtype=bool),
            "threshold": float(threshold),
            "edge": relevant / threshold if threshold == threshold and threshold > 0 else math.nan,
            "lr": float(lr),
            "num_matvecs": matvecs,
            "preconditioned_sharpness": pre_value,
            "preconditioned_matvecs": pre_matvecs,
            "wall_time": time.perf_counter() - start,
        }
        self._records.append(rec)
        if self.path is not None:
            self.save()
        return rec

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Arrays over the records: ``step``, ``loss``, ``sharpness`` ``(m, k)`` (top eigenvalues of H),
        ``residuals``/``converged`` ``(m, k)``, ``threshold`` (the optimizer's bound on the relevant sharpness:
        ``lambda_max(H)``, or the preconditioned one for Adam), ``edge`` (relevant sharpness / threshold; 1 at the
        edge of stability), ``lr``, ``num_matvecs`` (Hessian-vector products of the record),
        ``preconditioned_sharpness`` and ``preconditioned_matvecs`` (Adam; ``nan``/0 otherwise), ``wall_time``."""
        m, k = len(self._records), self.k
        out: dict[str, np.ndarray] = {
            "step": np.array([r["step"] for r in self._records], dtype=np.int64),
            "sharpness": np.array([r["sharpness"] for r in self._records], dtype=np.float64).reshape(m, k),
            "residuals": np.array([r["residuals"] for r in self._records], dtype=np.float64).reshape(m, k),
            "converged": np.array([r["converged"] for r in self._records], dtype=bool).reshape(m, k),
        }
        for name, dtype in (
            ("loss", np.float64),
            ("threshold", np.float64),
            ("edge", np.float64),
            ("lr", np.float64),
            ("num_matvecs", np.int64),
            ("preconditioned_sharpness", np.float64),
            ("preconditioned_matvecs", np.int64),
            ("wall_time", np.float64),
        ):
            out[name] = np.array([r[name] for r in self._records], dtype=dtype)
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "rule": self._rule_kind,
            "every": self.every,
            "k": self.k,
            "tol": self.tol,
            "max_matvecs": self.max_matvecs,
            "warm_start": self.warm_start,
            "seed": self.seed,
            "problem": self.problem.describe(),
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the history (arrays) and settings (attributes) to an HDF5 cache file under ``self.key``."""
        path = path if path is not None else self.path
        if path is None:
            raise ValueError("no path: pass save(path) or EdgeOfStabilityTracker(..., path=...)")
        with Cache(path, timeout=10.0) as cache:
            cache.put(self.key, "edge_of_stability", self.history, {"settings": self.settings})
            return cache.path

    @staticmethod
    def load(
        path: str | os.PathLike[str], key: str = "edge_of_stability"
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The history and settings saved by :meth:`save`."""
        with Cache(path, readonly=True) as cache:
            entry = cache.get(key)
        if entry is None:
            raise KeyError(f"{path} holds no entry {key!r}")
        return entry.arrays, entry.attrs.get("settings", {})

    def plot(self, ax: Any = None, *, color: str | None = None, label: str | None = None) -> Any:
        """Sharpness (solid) against the optimizer's threshold (dashed) over the steps; returns the axes.

        For Adam the preconditioned sharpness ``lambda_max(P^-1 H)`` is drawn against its threshold, with
        ``lambda_max(H)`` faint; eigenvalues ``2..k`` are drawn faint too. ``color`` and ``label`` (a prefix of the
        legend entries) tell several runs apart on one axes. Drawn by
        :func:`landscape.plot.stability.edge_of_stability_plot`.
        """
        from landscape.plot.stability import edge_of_stability_plot

        return edge_of_stability_plot(self.history, self._rule_kind, ax, color=color, label=label)

    def __repr__(self) -> str:
        n = len(self._records)
        return f"EdgeOfStabilityTracker(rule={self._rule_kind}, every={self.every}, k={self.k}, records={n})"
