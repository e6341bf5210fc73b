"""The report's own figures (:mod:`landscape.plot.report`): contour orientation and marker, the batch-size plot's
critical batch size, and the sizing that lets each figure fill its card."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from landscape.plot import surface_figure
from landscape.plot.report import card_html, contour_figure, scaling_figure
from tests.plot._surfaces import bowl


def test_contour_is_indexed_y_then_x_and_marks_the_trained_weights():
    s = bowl()
    fig = contour_figure(s)
    contour = next(t for t in fig.data if t.type == "contour")
    np.testing.assert_array_equal(np.asarray(contour.z), s.loss.T)  # plotly reads z[y][x]
    marker = next(t for t in fig.data if t.type == "scatter")
    assert (marker.x, marker.y, marker.name) == ((0.0,), (0.0,), "trained")
    assert fig.layout.yaxis.scaleanchor == "x"


def _scaling(b_noise: float, optimizer: str = "sgd") -> SimpleNamespace:
    B = np.array([4.0, 16.0, 64.0])
    noise = SimpleNamespace(b_noise=b_noise, eps_max=1.0, eps_opt=lambda b: 1.0 / (1.0 + b_noise / np.asarray(b)))
    return SimpleNamespace(
        batch_sizes=B,
        spectral_lr=0.1 * B / (B + 8),
        spectral_lr_stderr=0.01 * np.ones(3),
        worst_batch_lr=0.05 * B / (B + 8),
        fitted_lr=lambda b: 0.1 * np.asarray(b) / (np.asarray(b) + 8),
        linear_rule=lambda b: 0.01 * np.asarray(b),
        sqrt_rule=lambda b: 0.01 * np.sqrt(np.asarray(b)),
        optimizer=optimizer,
        noise=noise,
    )


def test_scaling_figure_draws_the_critical_batch_size_only_inside_the_measured_range():
    inside = scaling_figure(_scaling(24.0))
    names = [t.name for t in inside.data]
    assert "B_noise = 24 (critical batch size)" in names and "linear rule" in names
    assert inside.layout.xaxis.type == inside.layout.yaxis.type == "log"
    outside = scaling_figure(_scaling(1000.0, optimizer="adam"))
    names = [t.name for t in outside.data]
    assert not any(n.startswith("B_noise") for n in names) and "square-root rule" in names


def test_card_html_fills_the_card_and_embeds_plotly_only_when_asked():
    flat, solid = contour_figure(bowl()), surface_figure(bowl())
    with_js = card_html(flat, 300, include_plotlyjs=True)
    assert flat.layout.height == 300 and flat.layout.width is None and flat.layout.autosize
    assert flat.layout.margin.t == 100 and flat.layout.xaxis.automargin and flat.layout.yaxis.automargin
    assert "plotly.js v" in with_js and "plotly.js v" not in card_html(solid)
    assert solid.layout.margin.t == 50, "a 3D figure keeps its own margins"
