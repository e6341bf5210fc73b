"""What the stability analysis returns: one :class:`Criterion` per condition, gathered in a :class:`StabilityReport`.

A criterion compares a sharpness-like ``value`` with an lr-dependent ``threshold``; it holds iff ``value <
threshold``. Its ``kind`` says what a verdict means for the linearised dynamics (exact, necessary, sufficient or
heuristic), and the report's verdict and ``max_stable_lr`` use the exact and necessary criteria only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from landscape._json import field_dict, jsonable

__all__ = ["KINDS", "Criterion", "StabilityReport", "criterion"]

KINDS = ("exact", "necessary", "sufficient", "heuristic")


@dataclass(frozen=True)
class Criterion:
    """One stability criterion evaluated at one learning rate.

    Attributes
    ----------
    name
        What is compared, e.g. ``"gradient descent"`` or ``"mean-square SGD (exact)"``.
    kind
        ``"exact"`` (necessary and sufficient for the linearised dynamics), ``"necessary"`` (failing it means
        unstable), ``"sufficient"`` (passing it means stable) or ``"heuristic"`` (neither, or only under assumptions
        named in ``note``).
    value, threshold
        The criterion holds iff ``value < threshold`` (a sharpness-like quantity against an lr-dependent bound).
    margin
        ``(threshold - value) / threshold``: the relative headroom, positive iff the criterion holds (1 for an
        infinite threshold, ``-inf`` for an infinite value).
    stable
        The verdict ``value < threshold``.
    max_stable_lr
        The largest learning rate at which the criterion still holds, everything else fixed (``inf`` when it holds
        for every lr).
    reference
        Where the criterion comes from.
    note
        Assumptions and caveats.
    details
        Supporting numbers (spectral radius, standard errors, statistics the value is made of).
    """

    name: str
    kind: str
    value: float
    threshold: float
    margin: float
    stable: bool
    max_stable_lr: float
    reference: str
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**field_dict(self), "details": jsonable(self.details)}


def criterion(
    name: str,
    kind: str,
    value: float,
    threshold: float,
    max_stable_lr: float,
    reference: str,
    note: str = "",
    details: dict[str, Any] | None = None,
) -> Criterion:
    """The :class:`Criterion` ``value < threshold``, with its margin and verdict computed from the two."""
    value, threshold = float(value), float(threshold)
    if math.isinf(threshold):
        margin = 1.0
    elif math.isinf(value):
        margin = -math.inf
    else:
        margin = (threshold - value) / threshold
    return Criterion(
        name=name,
        kind=kind,
        value=value,
        threshold=threshold,
        margin=float(margin),
        stable=bool(value < threshold),
        max_stable_lr=float(max_stable_lr),
        reference=reference,
        note=note,
        details=dict(details or {}),
    )


@dataclass(frozen=True)
class StabilityReport:
    """Stability criteria of one optimizer at one learning rate, at the Problem's current parameters.

    Attributes
    ----------
    optimizer
        The update rule analysed: ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"sgd"`` (minibatch, no momentum),
        ``"adam"``, ``"adamw"`` or ``"sam"``.
    lr
        The learning rate the verdicts refer to.
    batch_size
        ``B`` for minibatch SGD, ``None`` for full batch.
    num_samples
        ``n``, examples in the Problem's data.
    criteria
        The :class:`Criterion` list, exact and necessary ones first.
    seed
        Seed of every random start, probe and batch (the ``int`` one draw gave when a ``torch.Generator`` was passed).
    num_matvecs
        Full-data Hessian-vector products (``num_per_example_products`` counts the single-example ones).
    num_per_example_products
        Per-example Hessian-vector products (each a pass over one example) and dense per-example Hessian columns.
    wall_time
        Seconds spent.
    settings
        The optimizer's hyperparameters and where they came from, ``problem`` (``Problem.describe()``: BatchNorm and
        dropout policy, dtype, parameters) and the estimator settings.
    notes
        What was left out and why.
    """

    optimizer: str
    lr: float
    batch_size: int | None
    num_samples: int
    criteria: tuple[Criterion, ...]
    seed: int
    num_matvecs: int
    num_per_example_products: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def binding(self) -> tuple[Criterion, ...]:
        """The exact and necessary criteria: those whose failure means the linearised dynamics are unstable."""
        return tuple(c for c in self.criteria if c.kind in ("exact", "necessary"))

    @property
    def stable(self) -> bool:
        """All exact and necessary criteria hold (heuristic and sufficient ones do not enter the verdict)."""
        return all(c.stable for c in self.binding)

    @property
    def max_stable_lr(self) -> float:
        """The most restrictive ``max_stable_lr`` of the exact and necessary criteria.

        With an exact criterion this is the stability threshold; with necessary ones only it is an upper bound on it.
        """
        return min((c.max_stable_lr for c in self.binding), default=math.inf)

    @property
    def max_stable_lr_is_exact(self) -> bool:
        """Whether an exact criterion is among them, which makes :attr:`max_stable_lr` the threshold itself."""
        return any(c.kind == "exact" for c in self.criteria)

    def __getitem__(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(f"no criterion {name!r}; this report has: {', '.join(c.name for c in self.criteria)}")

    @property
    def names(self) -> list[str]:
        """The criteria's names, in order."""
        return [c.name for c in self.criteria]

    def summary(self) -> str:
        """A short human-readable report."""
        mode = self.settings.get("problem", {}).get("mode", "?")
        batch = "full batch" if self.batch_size is None else f"batch size {self.batch_size} of {self.num_samples}"
        bound = "exact" if self.max_stable_lr_is_exact else "upper bound from necessary conditions"
        lines = [
            f"{self.optimizer} at lr = {self.lr:.6g} ({batch}): {'STABLE' if self.stable else 'UNSTABLE'}; "
            f"max stable lr {self.max_stable_lr:.6g} ({bound})"
        ]
        for c in self.criteria:
            rel = "<" if c.stable else ">="
            lines.append(
                f"  [{c.kind:>10}] {c.name}: {c.value:.6g} {rel} {c.threshold:.6g} (margin {100 * c.margin:+.1f}%, "
                f"max lr {c.max_stable_lr:.6g})"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(
            f"({self.num_matvecs} Hessian-vector products, {self.num_per_example_products} per-example products, "
            f"{self.wall_time:.2f} s, mode {mode}, seed {self.seed})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``inf`` where a criterion never binds)."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "stable": self.stable,
            "max_stable_lr": self.max_stable_lr,
            "max_stable_lr_is_exact": self.max_stable_lr_is_exact,
            "criteria": [c.to_dict() for c in self.criteria],
            "seed": self.seed,
            "num_matvecs": self.num_matvecs,
            "num_per_example_products": self.num_per_example_products,
            "wall_time": self.wall_time,
            "settings": jsonable(self.settings),
            "notes": list(self.notes),
        }
