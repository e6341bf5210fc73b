"""The block-spectra figures (ridge, bars, heatmap): what each draws, for a real result of a tiny model and for
duck-typed results of many blocks, and the errors of bad arguments (Agg backend, nothing shown)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landscape.blocks import block_spectra, heterogeneity  # noqa: E402
from landscape.linalg.slq import SpectralDensity  # noqa: E402
from landscape.plot.blocks import COLORBAR_LABEL, KINDS, MAX_ANNOTATED, block_spectra_plot  # noqa: E402
from tests.conftest import make_case  # noqa: E402
from tests.operators.test_operators import problem_of  # noqa: E402


@pytest.fixture(scope="module")
def result():
    """Four blocks (one per tensor of a tiny MLP), exact traces."""
    return block_spectra(problem_of(make_case("mlp")), by="parameter", k=2, num_probes=2, num_steps=10, full=False)


def fake(B: int, *, stderr: float = 0.1, scale: float = 1.0) -> SimpleNamespace:
    """A duck-typed result of ``B`` blocks with made-up densities and SLQ traces ``scale * (1, ..., B)``."""
    rng = np.random.default_rng(B)
    dens = [
        SpectralDensity(
            nodes=np.sort(rng.normal(b, 1 + b, size=(1, 6))),
            weights=np.full((1, 6), 1 / 6),
            num_params=6,
            sigma=0.1,
            steps=np.array([6]),
            num_matvecs=6,
            seed=None,
            wall_time=0.0,
            settings={"num_steps": 6},
        )
        for b in range(B)
    ]
    names = tuple(f"block{b}" for b in range(B))
    return SimpleNamespace(
        names=names,
        lambda_max=np.array([d.lambda_max for d in dens]),
        traces=scale * (np.arange(B) + 1.0),
        trace_stderrs=np.full(B, stderr),
        trace_methods=("slq",) * B,
        curvature="hessian",
        heterogeneity=heterogeneity(names, dens),
    )


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bar_container(ax):
    from matplotlib.container import BarContainer

    return next(c for c in ax.containers if isinstance(c, BarContainer))


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_ridge_draws_one_log_row_per_block_with_its_top_eigenvalue(result):
    fig = result.plot("ridge")
    rows = fig.axes
    assert len(rows) == len(result.names)
    assert [ax.get_ylabel() for ax in rows] == list(result.names)
    for ax, top in zip(rows, result.lambda_max, strict=True):
        assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0
        assert texts(ax) == [f"λ_max = {top:.4g}"]
        assert any(np.allclose(line.get_xdata(), top) for line in ax.get_lines())  # the dashed marker
    # One shared eigenvalue axis, the heterogeneity's common grid; labelled once, at the bottom.
    assert {ax.get_xlim() for ax in rows} == {(result.heterogeneity.grid[0], result.heterogeneity.grid[-1])}
    assert rows[-1].get_xlabel() == "eigenvalue λ" and not rows[0].get_xlabel()


def test_ridge_floors_each_density_at_a_fraction_of_its_peak(result):
    fig = result.plot("ridge", floor=1e-3)
    for ax, d in zip(fig.axes, result.heterogeneity.densities, strict=True):
        curve = ax.get_lines()[0].get_ydata()
        assert curve.min() == pytest.approx(1e-3 * d.max()) and curve.max() == pytest.approx(d.max())
    with pytest.raises(ValueError, match="floor"):
        result.plot("ridge", floor=0.0)


def test_ridge_into_given_axes(result):
    B = len(result.names)
    fig, ax = plt.subplots()
    assert result.plot("ridge", ax=ax) is fig
    assert not ax.axison and len(ax.child_axes) == B  # the axes split into B rows
    fig, axes = plt.subplots(B, 1)
    result.plot("ridge", ax=axes)
    assert [a.get_ylabel() for a in axes] == list(result.names)
    with pytest.raises(ValueError, match=f"{B} axes"):
        result.plot("ridge", ax=axes[:2])


def test_bars_show_top_eigenvalues_and_traces_per_block(result):
    fig = result.plot("bars")
    tops, traces = fig.axes
    for ax, values in ((tops, result.lambda_max), (traces, result.traces)):
        np.testing.assert_allclose([p.get_height() for p in ax.patches], values)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(result.names)
    assert bar_container(traces).errorbar is None, "exact traces have no error bars"
    assert "exact (diagonal)" in traces.get_title()


def test_bars_have_two_stderr_error_bars_and_a_log_axis_when_values_span_decades():
    r = fake(5, stderr=0.25, scale=1.0)
    fig = block_spectra_plot(r, "bars")
    segments = bar_container(fig.axes[1]).errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 4 * 0.25)  # +-2 standard errors
    assert fig.axes[1].get_yscale() == "linear"
    r.traces = np.geomspace(1e-3, 10.0, 5)
    assert block_spectra_plot(r, "bars").axes[1].get_yscale() == "log"
    assert block_spectra_plot(r, "bars", log=False).axes[1].get_yscale() == "linear"


def test_bars_in_one_axes_are_grouped(result):
    fig, ax = plt.subplots()
    result.plot("bars", ax=ax)
    assert len(ax.patches) == 2 * len(result.names)
    assert len(ax.get_legend().get_texts()) == 2


def test_heatmap_shows_the_distances_annotated_with_names_on_both_axes(result):
    fig = result.plot("heatmap")
    ax = fig.axes[0]
    D = result.heterogeneity.distances
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), D)
    assert ax.get_images()[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(result.names)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(result.names)
    assert sorted(texts(ax)) == sorted(f"{d:.2f}" for d in D.ravel())
    assert fig.axes[1].get_ylabel() == COLORBAR_LABEL  # the colorbar
    assert f"max {result.heterogeneity.max:.3g}" in ax.get_title()


def test_heatmap_annotates_only_small_matrices():
    assert len(block_spectra_plot(fake(MAX_ANNOTATED), "heatmap").axes[0].texts) == MAX_ANNOTATED**2
    assert len(block_spectra_plot(fake(MAX_ANNOTATED + 1), "heatmap").axes[0].texts) == 0


def test_a_bad_kind_names_the_choices(result):
    with pytest.raises(ValueError, match="ridge.*bars.*heatmap") as err:
        result.plot("violin")
    assert "violin" in str(err.value) and KINDS == ("ridge", "bars", "heatmap")
