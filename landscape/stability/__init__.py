"""Whether an optimizer is linearly stable at the current point, and how sharpness evolves against its threshold.

Near a point ``w`` the loss is the quadratic ``L(w + d) ~ L(w) + g^T d + d^T H d / 2``, and one optimizer step is a
linear map of the deviation. Every criterion of this package asks whether that map (or its mean square, for SGD) is a
contraction; the learning rate at which it stops being one is the criterion's ``max_stable_lr``.

- :mod:`~landscape.stability.rules`: the update rules (gradient descent, heavy ball, Nesterov, Adam/AdamW with a
  frozen preconditioner, SAM) and their thresholds;
- :mod:`~landscape.stability.sgd`: minibatch SGD, the exact mean-square criterion and the conditions that scale;
- :mod:`~landscape.stability.check`: :func:`stability`, every criterion of one rule at one learning rate;
- :mod:`~landscape.stability.report`: :class:`Criterion` and :class:`StabilityReport`;
- :mod:`~landscape.stability.tracker`: :class:`EdgeOfStabilityTracker`, sharpness against the threshold during
  training.
"""

from landscape.operators.per_example import CHUNK_ELEMENTS
from landscape.operators.per_example import PerExample as _PerExample  # noqa: F401  (its old name here, for callers)
from landscape.stability import rules
from landscape.stability.check import stability
from landscape.stability.report import KINDS, Criterion, StabilityReport
from landscape.stability.rules import (  # noqa: F401  (exported below as rules.__all__ lists them)
    OPTIMIZERS,
    REF_ADAM,
    REF_BATCH,
    REF_DEXTER,
    REF_GD,
    REF_HEAVY_BALL,
    REF_MM,
    REF_NESTEROV,
    REF_SAM,
    REF_WU_MA_E,
    REF_WU_SU,
    SAM_VARIANTS,
)
from landscape.stability.sgd import COHERENCE_MAX_ELEMENTS, EXACT_AUTO_MAX_PARAMS, EXACT_MAX_PARAMS
from landscape.stability.tracker import TRACKED_RULES, EdgeOfStabilityTracker

# The rules' constants (optimizer names, SAM variants, the references of the criteria): listed once, in rules.__all__.
_RULE_CONSTANTS = [name for name in rules.__all__ if name.isupper()]

__all__ = [
    "CHUNK_ELEMENTS",
    "COHERENCE_MAX_ELEMENTS",
    "EXACT_AUTO_MAX_PARAMS",
    "EXACT_MAX_PARAMS",
    "KINDS",
    *_RULE_CONSTANTS,
    "TRACKED_RULES",
    "Criterion",
    "EdgeOfStabilityTracker",
    "StabilityReport",
    "stability",
]
