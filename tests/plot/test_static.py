"""matplotlib figures: what each kind draws, its labels and colour bar, the errors, files written, no global state."""

from __future__ import annotations

from unittest import mock

import matplotlib

# Selected before any figure exists (pyplot picks its backend lazily): no display needed.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

import landscape  # noqa: E402
from landscape.plot import curves, density_plot, save, surface_plot, trajectory_overlay  # noqa: E402
from landscape.surface.directions import Directions  # noqa: E402
from landscape.surface.grid import Surface  # noqa: E402
from tests.plot._surfaces import Trajectory, bowl, cube, density, line, trajectory, with_loss  # noqa: E402

KINDS_2D = ["contour", "filled", "heatmap", "3d"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _colour_bars(ax) -> list:
    return [a for a in ax.figure.axes if a is not ax]


def _texts(ax) -> list[str]:
    """Non-empty texts (arrows are annotations with empty text)."""
    return [t.get_text() for t in ax.texts if t.get_text()]


@pytest.mark.parametrize("kind", KINDS_2D)
def test_each_2d_kind_has_direction_axis_labels_and_a_labelled_colour_bar(kind):
    ax = surface_plot(bowl(), kind)
    assert ax.get_xlabel() == "filter-normalised direction 1"
    assert ax.get_ylabel() == "filter-normalised direction 2"
    bars = _colour_bars(ax)
    assert len(bars) == 1 and bars[0].get_ylabel() == "loss"
    assert "filter-normalised" in ax.get_title()


def test_contour_kind_draws_labelled_contour_lines():
    ax = surface_plot(bowl(), "contour", levels=12)
    sets = [a for a in ax.get_children() if isinstance(a, ContourSet)]
    assert len(sets) == 1 and not sets[0].filled
    assert len(sets[0].levels) == 12
    assert sets[0].labelTexts, "contour lines carry value labels"


def test_filled_heatmap_and_3d_draw_their_own_artists():
    filled = surface_plot(bowl(), "filled")
    assert any(isinstance(a, ContourSet) and a.filled for a in filled.get_children())
    heat = surface_plot(bowl(), "heatmap")
    meshes = [a for a in heat.get_children() if isinstance(a, QuadMesh)]
    assert len(meshes) == 1
    np.testing.assert_array_equal(np.asarray(meshes[0].get_array()).reshape(9, 7), bowl().loss)
    three = surface_plot(bowl(), "3d")
    assert three.name == "3d" and three.get_zlabel() == "loss"
    assert any(isinstance(a, Poly3DCollection) for a in three.get_children())


@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap"])
def test_origin_is_marked_when_it_lies_on_the_grid(kind):
    ax = surface_plot(bowl(), kind)
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1
    np.testing.assert_array_equal(stars[0].get_xydata(), [[0.0, 0.0]])


def test_log_levels_are_geometric_and_the_colour_bar_says_log():
    ax = surface_plot(bowl(), "filled", log_levels=True, levels=9)
    cs = next(a for a in ax.get_children() if isinstance(a, ContourSet) and a.filled)
    ratios = np.asarray(cs.levels[1:]) / np.asarray(cs.levels[:-1])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)
    np.testing.assert_allclose([cs.levels[0], cs.levels[-1]], [bowl().loss.min(), bowl().loss.max()], rtol=1e-12)
    assert _colour_bars(ax)[0].get_ylabel() == "loss (log scale)"


def test_log_3d_heights_are_log10_and_labelled_so():
    ax = surface_plot(bowl(), "3d", log_levels=True)
    assert ax.get_zlabel() == "log10 loss"
    z0, z1 = ax.get_zlim()
    assert z0 <= np.log10(bowl().loss.min()) and np.log10(bowl().loss.max()) <= z1 < bowl().loss.max()


@pytest.mark.parametrize("kind", KINDS_2D)
def test_log_levels_reject_non_positive_values(kind):
    s = bowl()
    s = with_loss(s, s.loss - 0.1)  # exactly 0 at the origin
    with pytest.raises(ValueError, match="positive"):
        surface_plot(s, kind, log_levels=True)


def test_log_scale_rejects_non_positive_values_in_1d_and_curves():
    s = line()
    bad = with_loss(s, s.loss - s.loss.max())
    with pytest.raises(ValueError, match="positive"):
        surface_plot(bad, log_levels=True)
    with pytest.raises(ValueError, match="positive"):
        curves([s, bad], log=True)


def test_accuracy_quantity_labels_the_colour_bar_and_draws_the_accuracy():
    ax = surface_plot(bowl(), "heatmap", quantity="accuracy")
    assert _colour_bars(ax)[0].get_ylabel() == "accuracy"
    mesh = next(a for a in ax.get_children() if isinstance(a, QuadMesh))
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(9, 7), bowl().accuracy)


def test_wrong_kind_quantity_and_dimension_give_clear_errors():
    with pytest.raises(ValueError, match="kind='surface'"):
        surface_plot(bowl(), "surface")
    with pytest.raises(ValueError, match="1D surface can be drawn as one of"):
        surface_plot(line(), "contour")
    with pytest.raises(ValueError, match="2D surface can be drawn as one of"):
        surface_plot(bowl(), "line")
    with pytest.raises(ValueError, match="quantity must be one of"):
        surface_plot(bowl(), quantity="error")
    with pytest.raises(ValueError, match="no accuracy"):
        surface_plot(line(accuracy=False), quantity="accuracy")
    with pytest.raises(ValueError, match="3D surface.*slice"):
        surface_plot(cube())
    with pytest.raises(ValueError, match="needs a 3D axes"):
        surface_plot(bowl(), "3d", ax=plt.figure().add_subplot())
    with pytest.raises(ValueError, match="levels"):
        surface_plot(bowl(), "contour", levels=1)
    with pytest.raises(ValueError, match="only be drawn over a 2D surface"):
        surface_plot(line(), trajectory=trajectory())


def test_draws_into_a_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    assert surface_plot(bowl(), "filled", ax=b) is b
    assert not a.collections and b.collections


def test_1d_line_marks_the_origin_and_names_the_direction():
    ax = surface_plot(line("layer_normalized"))
    assert ax.get_xlabel() == "layer-normalised direction 1" and ax.get_ylabel() == "loss"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), line().loss)
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == 0.0


def test_interpolation_marks_model_a_at_0_and_model_b_at_1():
    ax = surface_plot(line("interpolation"))
    assert "α" in ax.get_xlabel() and "model A" in ax.get_xlabel()
    assert {"model A", "model B"} <= set(_texts(ax))
    vlines = sorted(ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() == ":")
    assert vlines == [0.0, 1.0]


@pytest.mark.parametrize("points", [21, 4])
def test_model_labels_keep_clear_of_a_curve_that_runs_along_the_top(points):
    # Accuracy rising from 0.1 at model A to 1.0 at model B: model A's label fits under the top edge, model B's only
    # over the bottom one. With 4 points no grid point lies under either label (-0.5, 0.17, 0.83, 1.5): the curve
    # between them must count too.
    a = np.linspace(-0.5, 1.5, points)
    acc = np.clip(0.1 + 0.9 * a, 0.1, 1.0)
    ax = surface_plot(
        Surface((a,), 1.0 - acc, acc, Directions(torch.zeros(1, 4), "interpolation", None, {}), {}), quantity="accuracy"
    )
    where = {t.get_text(): t.get_verticalalignment() for t in ax.texts}
    assert where == {"model A": "top", "model B": "bottom"}


def test_pca_axes_show_explained_variance_from_the_trajectory():
    ax = surface_plot(bowl("user"), "contour", trajectory=trajectory([0.873, 0.1]))
    assert ax.get_xlabel() == "PC1 (87.3%)" and ax.get_ylabel() == "PC2 (10.0%)"
    assert "PC1" in ax.get_title()


def test_pca_axes_show_explained_variance_from_the_direction_settings():
    ax = surface_plot(bowl("pca", settings={"explained_variance": [0.5, 0.25]}), "heatmap")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (50.0%)", "PC2 (25.0%)")
    ax = surface_plot(bowl("pca"), "heatmap")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1", "PC2")
    with pytest.raises(ValueError, match="fractions"):
        surface_plot(bowl("pca", settings={"explained_variance": [87.3, 10.0]}))


def test_hessian_axes_show_their_eigenvalues_and_other_kinds_their_normalisation():
    ax = surface_plot(bowl("hessian_axes", settings={"eigenvalues": [12.34, 0.5]}), "heatmap")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Hessian eigenvector 1 (λ = 12.3)", "Hessian eigenvector 2 (λ = 0.5)")
    assert surface_plot(line("model_normalized")).get_xlabel() == "model-normalised direction 1"
    assert surface_plot(bowl("random"), "heatmap").get_title() == "Loss surface over two random directions"


def test_long_trajectories_label_only_start_and_end():
    ax = plt.figure().add_subplot()
    coords = np.stack([np.linspace(1.0, 0.0, 30), np.linspace(0.5, 0.0, 30)], axis=1)
    trajectory_overlay(ax, Trajectory(coords, [f"step {t}" for t in range(30)]))
    assert _texts(ax) == ["start (step 0)", "end (step 29)"]
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert 1 <= len(arrows) <= 8


def test_trajectory_overlay_draws_the_path_arrows_and_labels_start_and_end():
    ax = plt.figure().add_subplot()
    path = trajectory()
    assert trajectory_overlay(ax, path) is ax
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), path.coords)
    texts = _texts(ax)
    assert texts[0] == "start (epoch 0)" and texts[-1] == "end (epoch 3)" and "epoch 1" in texts
    arrows = [t for t in ax.texts if t.get_text() == "" and getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 3  # one per segment when there are few
    ax2 = plt.figure().add_subplot()
    trajectory_overlay(ax2, path.coords, labels=False)
    assert not _texts(ax2)


def test_trajectory_overlay_skips_arrows_on_segments_that_do_not_move():
    ax = plt.figure().add_subplot()
    trajectory_overlay(ax, np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
    assert len([t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]) == 1


def test_trajectory_overlay_rejects_bad_shapes_and_3d_without_heights():
    ax = plt.figure().add_subplot()
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        trajectory_overlay(ax, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="heights"):
        trajectory_overlay(plt.figure().add_subplot(projection="3d"), trajectory())


def test_trajectory_on_3d_is_lifted_onto_the_surface():
    s = bowl()
    ax = surface_plot(s, "3d", trajectory=trajectory())
    path = next(ln for ln in ax.lines if ln.get_label() == "trajectory")
    x, y, z = path.get_data_3d()
    # (0, 0) is a grid point: the lifted height there is the surface value exactly.
    assert x[-1] == 0.0 and y[-1] == 0.0 and z[-1] == pytest.approx(s.loss[4, 3], abs=1e-12)


def test_curves_draw_every_surface_with_a_legend_and_model_marks_for_interpolations():
    a, b = line("interpolation"), line("interpolation", shift=0.1)
    ax = curves({"seed 0": a, "seed 1": b})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), b.loss)
    assert {"model A", "model B"} <= set(_texts(ax))
    ax = curves([line(), line(shift=0.2)], labels=["x", "y"], log=True)
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "random direction 1"
    assert not {"model A", "model B"} & set(_texts(ax))
    with pytest.raises(ValueError, match="1D"):
        curves([line(), bowl()])
    with pytest.raises(ValueError, match="labels"):
        curves([line()], labels=["a", "b"])


def test_curves_name_the_gaps_where_a_curve_is_not_finite():
    diverged = line("interpolation")
    loss = diverged.loss.copy()
    loss[-2:] = np.nan  # e.g. extrapolated BatchNorm variances below zero
    ax = curves({"diverges": with_loss(diverged, loss), "fine": line("interpolation", shift=0.1)}, log=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["diverges (gap: 2 points not finite)", "fine"]
    assert np.isnan(ax.lines[0].get_ydata()[-2:]).all() and np.isfinite(ax.lines[0].get_ydata()[:-2]).all()


def test_density_plot_integrates_to_one_on_a_linear_scale():
    d = density()
    ax = density_plot(d)
    x, y = ax.lines[0].get_data()
    assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
    assert ax.get_xlabel() == "eigenvalue λ" and ax.get_ylabel() == "density" and ax.get_yscale() == "linear"
    # The default grid reaches past both outlier eigenvalues.
    assert x[0] < d.lambda_min and x[-1] > d.lambda_max >= 19.0


def test_density_plot_on_a_log_scale_keeps_values_positive():
    ax = density_plot(density(), log=True, sigma=0.2)
    y = ax.lines[0].get_ydata()
    assert ax.get_yscale() == "log" and np.all(y > 0) and "log" in ax.get_ylabel()
    assert "σ = 0.2" in ax.get_title()
    grid = np.linspace(-1.0, 25.0, 500)
    ax = density_plot(density(), grid=grid)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), grid)
    with pytest.raises(ValueError, match="sigma"):
        density_plot(density(), sigma=0.0)


# --------------------------------------------------------------------------------------------- text inside the figure
def _long_density():
    """A density whose default title is as long as real ones get (16 probes, 100 Lanczos steps, a 4-digit sigma)."""
    eigenvalues = torch.cat([torch.linspace(0.0, 1.0, 198), torch.tensor([3.7, 10.5])]).double()
    op = landscape.MatrixOperator(torch.diag(eigenvalues))
    return landscape.spectral_density(op, num_probes=16, num_steps=100, sigma=0.09691)


def _two_panel_density():
    """The command line's density.png (``spectrum`` and ``density``): linear and log panels, 9 x 3.4 in, tight."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    d = _long_density()
    d.plot(ax=axes[0])
    d.plot(ax=axes[1], log=True)
    fig.tight_layout()
    return fig


def _command_line_surface(surface, kind):
    """The command line's surface.png: one 5 x 4 in panel, tight."""
    fig, ax = plt.subplots(figsize=(5, 4))
    surface_plot(surface, kind, ax)
    fig.tight_layout()
    return fig


FIGURES = {
    **{kind: lambda kind=kind: surface_plot(bowl(), kind) for kind in KINDS_2D},
    **{
        f"{kind}, PCA trajectory": lambda kind=kind: surface_plot(bowl("pca"), kind, trajectory=trajectory([0.8, 0.1]))
        for kind in KINDS_2D
    },
    "heatmap of accuracy, Hessian axes": lambda: surface_plot(
        bowl("hessian_axes", settings={"eigenvalues": [12.34, 0.5]}), "heatmap", quantity="accuracy", log_levels=True
    ),
    "line": lambda: surface_plot(line("layer_normalized")),
    "interpolation": lambda: surface_plot(line("interpolation"), quantity="accuracy"),
    "curves with a gap": lambda: curves(
        {"diverges": with_loss(line(), np.r_[line().loss[:-2], np.nan, np.nan]), "fine": line(shift=0.1)},
        log=True,
    ),
    "density": lambda: density_plot(_long_density()),
    "density, log": lambda: density_plot(_long_density(), log=True),
    "command line density.png": _two_panel_density,
    "command line surface.png, 2D": lambda: _command_line_surface(bowl(), "contour"),
    "command line surface.png, 1D": lambda: _command_line_surface(line(), "line"),
}


def _drawn_texts(fig) -> list[tuple[str, object]]:
    """``(text, window extent)`` of every Text the figure draws, visible and non-empty, measured as it is drawn.

    Measured during the draw: tick labels outside the view limits are visible Text artists that are never drawn, and
    mplot3d texts stand at their projected place only while they draw.
    """
    drawn = []
    draw = Text.draw
    renderer = fig.canvas.get_renderer()

    def measured(text, *args, **kwargs):
        draw(text, *args, **kwargs)
        if text.get_visible() and text.get_text():
            drawn.append((text.get_text(), text.get_window_extent(renderer)))

    with mock.patch.object(Text, "draw", measured):
        fig.canvas.draw()
    return drawn


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_drawn_text_lies_inside_the_figure(name):
    made = FIGURES[name]()
    fig = made if hasattr(made, "canvas") else made.figure
    box = fig.bbox
    texts = _drawn_texts(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert texts and set(titles) <= {t for t, _ in texts}, "the titles are among the texts checked"
    tol = 0.5  # pixels: rounding of the text layout
    outside = [
        (t, tuple(round(v) for v in e.extents))
        for t, e in texts
        if e.x0 < box.x0 - tol or e.y0 < box.y0 - tol or e.x1 > box.x1 + tol or e.y1 > box.y1 + tol
    ]
    assert not outside, f"clipped at the figure's edge {tuple(round(v) for v in box.extents)}: {outside}"


@pytest.mark.parametrize(("suffix", "magic"), [(".pdf", b"%PDF-"), (".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml")])
def test_save_writes_the_format_of_the_suffix(tmp_path, suffix, magic):
    ax = surface_plot(bowl(), "contour")
    out = save(ax.figure, tmp_path / "sub" / f"surface{suffix}")
    data = out.read_bytes()
    assert out.exists() and data.startswith(magic)
    if suffix == ".pdf":
        assert b"/Subtype /Image" not in data, "contour PDF must be vector, with no embedded raster"
    if suffix == ".svg":
        assert b"<svg" in data


def test_save_accepts_axes_and_rejects_unknown_suffixes(tmp_path):
    ax = surface_plot(line())
    assert save(ax, tmp_path / "line.PNG").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="suffix"):
        save(ax.figure, tmp_path / "line.jpg")
    with pytest.raises(TypeError, match="Figure"):
        save(object(), tmp_path / "x.pdf")


def test_pdf_output_is_reproducible(tmp_path):
    ax = surface_plot(bowl(), "filled")
    first = save(ax.figure, tmp_path / "a.pdf").read_bytes()
    second = save(ax.figure, tmp_path / "b.pdf").read_bytes()
    assert first == second


def test_global_rcparams_are_unchanged_by_plotting(tmp_path):
    before = dict(matplotlib.rcParams)
    for kind in KINDS_2D:
        save(surface_plot(bowl(), kind, log_levels=True, trajectory=trajectory()), tmp_path / f"{kind}.pdf")
    curves([line("interpolation")])
    density_plot(density(), log=True)
    assert dict(matplotlib.rcParams) == before
