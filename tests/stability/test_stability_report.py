"""The report's verdicts, margins and ``max_stable_lr`` agree with its criteria and with runs just below and above."""

from __future__ import annotations

import json
import math

from landscape.stability import stability
from tests.stability.helpers import Regression, one_thread  # noqa: F401


def test_report_verdicts_margins_and_max_stable_lr_are_consistent():
    q = Regression(n=8, scales=(2.0, 1.0, 0.6, 0.3))
    for kwargs in (
        {"optimizer": "gd"},
        {"optimizer": "sgd", "batch_size": 3},
        {"optimizer": "nesterov", "momentum": 0.9},
    ):
        for lr in (0.01, 0.3):
            report = stability(q.problem(), lr=lr, **kwargs)
            for c in report.criteria:
                assert c.stable == (c.value < c.threshold) == (c.margin > 0)
                assert c.kind in ("exact", "necessary", "sufficient", "heuristic")
                if math.isfinite(c.max_stable_lr):
                    below = stability(q.problem(), lr=0.999 * c.max_stable_lr, **kwargs)[c.name]
                    above = stability(q.problem(), lr=1.001 * c.max_stable_lr, **kwargs)[c.name]
                    assert below.stable and not above.stable, c.name
            assert report.stable == all(c.stable for c in report.criteria if c.kind in ("exact", "necessary"))
            assert report.max_stable_lr == min(c.max_stable_lr for c in report.binding)
            assert report.stable == (lr < report.max_stable_lr)
            json.dumps(report.to_dict())
            assert ("UNSTABLE" in report.summary()) == (not report.stable)
