"""One self-contained HTML file with every analysis of a model: spectrum, surfaces, sharpness, stability, scaling.

The page embeds plotly.js once (``include_plotlyjs=True`` on the first figure, no CDN), so it opens with the network
off. Every section is present; one whose result was not given says "not computed". Every user string goes through
:func:`html.escape`. The numbers shown are also embedded as JSON (``<script type="application/json"
id="landscape-data">``) for machines.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from landscape.plot.interactive import TEMPLATE, density_figure, surface_figure, to_html
from landscape.report.provenance import Provenance, library_versions

NOT_COMPUTED = "not computed"

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --ok: #1a7f37; --bad: #cf222e;
        --warn: #9a6700; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
header { padding: 24px 32px 12px; border-bottom: 1px solid var(--line); background: var(--bg); }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 2px 0; color: var(--muted); }
nav { margin-top: 10px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 32px; max-width: 1400px; }
section { border-bottom: 1px solid var(--line); padding: 12px 0 20px; }
h2 { font-size: 20px; margin: 12px 0 8px; }
h3 { font-size: 16px; margin: 16px 0 6px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 150px; background: #fff; }
.card .label { color: var(--muted); font-size: 12px; letter-spacing: .02em; }
.card .value { font-size: 20px; font-variant-numeric: tabular-nums; }
.card .how { color: var(--muted); font-size: 12px; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(480px, 100%), 1fr)); gap: 12px; }
.fig { border: 1px solid var(--line); border-radius: 8px; padding: 4px; min-width: 0; }
.scroll { max-width: 100%; overflow-x: auto; }  /* a wide table scrolls in place, the page keeps its width */
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
         color: #fff; }
.stable { background: var(--ok); } .unstable { background: var(--bad); } .info { background: var(--muted); }
.absent { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; font-size: 12px;
      overflow-x: auto; max-height: 360px; }
code { font-size: 13px; }
footer { padding: 12px 32px; color: var(--muted); font-size: 13px; }
"""

SECTIONS = (
    ("spectrum", "Hessian spectrum"),
    ("surfaces", "Loss surfaces"),
    ("sharpness", "Sharpness"),
    ("stability", "Stability of optimizer settings"),
    ("scaling", "Batch-size scaling"),
    ("provenance", "Provenance"),
)


# A figure is drawn as soon as its <div> is parsed, before the cards after it exist, so at first it takes the width
# of a row that later holds two cards; plotly's `responsive` follows the window only. Redraw each figure whenever its
# card changes size (also once at load).
RESIZE = """<script>
(function () {
  if (!window.ResizeObserver || !window.Plotly) return;
  var observer = new ResizeObserver(function (entries) {
    entries.forEach(function (entry) {
      var plot = entry.target.querySelector(".js-plotly-plot");
      if (plot && plot._fullLayout) window.Plotly.Plots.resize(plot);
    });
  });
  document.querySelectorAll(".fig").forEach(function (card) { observer.observe(card); });
})();
</script>"""


class _Raw(str):
    """Markup built here from escaped parts: inserted as is."""


def fmt(x: Any, digits: int = 6) -> str:
    """A number as the report prints it: ``{x:.{digits}g}``, ``nan``/``inf`` spelled out, ``-`` for ``None``."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def pm(value: Any, stderr: Any) -> str:
    """``value ± stderr`` (stderr to two significant digits), or the value alone when the error is unknown."""
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return fmt(value)
    return f"{fmt(value)} ± {fmt(stderr, 2)}"


def _cell(value: Any, header: bool = False) -> str:
    tag = "th" if header else "td"
    if isinstance(value, _Raw):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return f'<{tag} class="num">{escape(fmt(value))}</{tag}>'
    return f"<{tag}>{escape(str(value))}</{tag}>"


def table(head: Sequence[Any] | None, rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table (no header row for ``head=None``) in a box that scrolls sideways when the table is wider than the
    page; every cell is escaped unless built here as markup."""
    attr = f' class="{escape(cls)}"' if cls else ""
    out = [f'<div class="scroll"><table{attr}>']
    if head is not None:
        out += ["<thead><tr>", *(_cell(h, header=True) for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(_cell(v) for v in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _badge(ok: bool | None, yes: str = "stable", no: str = "UNSTABLE") -> _Raw:
    if ok is None:
        return _Raw('<span class="badge info">info</span>')
    return _Raw(f'<span class="badge {"stable" if ok else "unstable"}">{escape(yes if ok else no)}</span>')


def _cards(items: Sequence[tuple[str, Any]]) -> str:
    cells = []
    for label, value in items:
        shown = value if isinstance(value, _Raw) else escape(str(value))
        cells.append(
            f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{shown}</div></div>'
        )
    return '<div class="cards">' + "".join(cells) + "</div>"


def _absent(what: str) -> str:
    return f'<p class="absent">{escape(what)}: {NOT_COMPUTED}.</p>'


def _json_script(data: Any) -> str:
    text = json.dumps(strict_json(data), default=_jsonable, allow_nan=False)
    # "<", ">" and "&" occur only inside JSON strings, where their \\u003c-style escapes mean the same; the HTML
    # parser then never sees "</script>" or "<!--" in the data.
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, code)
    return '<script type="application/json" id="landscape-data">' + text + "</script>"


def strict_json(x: Any) -> Any:
    """``x`` with every non-finite float written as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (valid JSON)."""
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return strict_json(x.tolist())
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return fmt(x)
    if hasattr(x, "to_dict"):
        return strict_json(x.to_dict())
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return str(x)


# ------------------------------------------------------------------------------------------------------- trace
@dataclass(frozen=True)
class ReportTrace:
    """The one Hessian trace a report shows: value, standard error (0 when exact) and how it was obtained."""

    value: float
    stderr: float
    method: str
    how: str
    source: str

    def shown(self) -> str:
        """``"19.15"`` when exact, ``"20.57 ± 1.7"`` for an estimate."""
        return fmt(self.value) if self.method == "exact" else pm(self.value, self.stderr)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_hessian(spectrum: Any) -> bool:
    return str(spectrum.settings.get("operator", "hessian")).lower() in ("hessian", "hessianoperator")


def _how(est: Any, spectrum: Any = None) -> str:
    if est.method == "exact":
        return "exact, second-order backpropagation"
    if est.method == "slq" and spectrum is not None:
        return f"SLQ, {spectrum.density.num_probes} probes"
    return f"{est.method}, {est.num_matvecs} Hessian-vector products"


def best_trace(spectrum: Any = None, sharpness: Any = None) -> ReportTrace | None:
    """The best Hessian trace among the results: exact when computed, else the estimate with the smaller error.

    The spectrum's SLQ trace counts only for a Hessian spectrum (a GGN's trace is another number); the sharpness
    trace is exact where every layer allows second-order backpropagation (:func:`landscape.trace`). A report shows
    this one trace everywhere, so its header and its tables never disagree.
    """
    found = []
    if sharpness is not None and sharpness.trace is not None:
        found.append((sharpness.trace, _how(sharpness.trace), "sharpness"))
    if spectrum is not None and _is_hessian(spectrum):
        found.append((spectrum.trace, _how(spectrum.trace, spectrum), "spectrum"))
    if not found:
        return None

    def rank(item: tuple[Any, str, str]) -> tuple[int, float]:
        est = item[0]
        se = float(est.stderr) if est.stderr is not None else math.nan
        return (0 if est.method == "exact" else 1, se if math.isfinite(se) else math.inf)

    est, how, source = min(found, key=rank)
    stderr = 0.0 if est.method == "exact" else float(est.stderr)
    return ReportTrace(float(est.value), stderr, str(est.method), how, source)


def _trace_card(trace: ReportTrace) -> _Raw:
    return _Raw(f'{escape(trace.shown())}<div class="how">{escape(trace.how)}</div>')


# ------------------------------------------------------------------------------------------------------- figures
class _Figures:
    """Renders figures into ``<div>``s; plotly.js is embedded once, with the first figure.

    Each figure takes its card's width (no fixed width; :data:`RESIZE` redraws it when the card changes size) and
    keeps margins that hold its titles: axis margins grow with the tick labels and axis titles (``automargin``).
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: Any, height: int = 420) -> str:
        fig.update_layout(height=height, width=None, autosize=True)
        if not any(t.type in ("surface", "scatter3d") for t in fig.data):
            # The top margin holds a two-line title (the density's); plotly centres the title in it.
            fig.update_layout(margin={"l": 70, "r": 30, "t": 100, "b": 60})
            fig.update_xaxes(automargin=True)
            fig.update_yaxes(automargin=True)
        html = to_html(fig, include_plotlyjs=self.count == 0, full_html=False)
        self.count += 1
        return f'<div class="fig">{html}</div>'


def _contour_figure(surface: Any) -> Any:
    """Contour map of a 2D surface's loss (the interactive 3D view's companion), trained weights marked."""
    import plotly.graph_objects as go

    from landscape.plot import _common as c

    x, y = (np.asarray(v, dtype=np.float64) for v in surface.coords[:2])
    names = c.axis_labels(surface)
    fig = go.Figure(
        go.Contour(
            x=x.tolist(),
            y=y.tolist(),
            z=np.asarray(surface.loss, dtype=np.float64).T.tolist(),
            colorscale="Viridis",
            ncontours=30,
            colorbar={"title": {"text": "loss"}},
            hovertemplate=f"{names[0]}: %{{x:.4g}}<br>{names[1]}: %{{y:.4g}}<br>loss: %{{z:.6g}}<extra></extra>",
        )
    )
    if c.contains(x, 0.0) and c.contains(y, 0.0):
        fig.add_trace(
            go.Scatter(
                x=[0.0], y=[0.0], mode="markers", marker={"symbol": "x", "size": 10, "color": "red"}, name="trained"
            )
        )
    fig.update_layout(
        title={"text": "loss contours"},
        xaxis_title=names[0],
        yaxis_title=names[1],
        template=TEMPLATE,
        showlegend=False,
        yaxis={"scaleanchor": "x"},
    )
    return fig


def _scaling_figure(scaling: Any) -> Any:
    """Learning rates against batch size (log-log): measured ``2/lambda_max(H_B)``, fit, scaling rule, ``eps_opt``."""
    import plotly.graph_objects as go

    B = np.asarray(scaling.batch_sizes, dtype=np.float64)
    grid = np.geomspace(B[0], B[-1], 100)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=B.tolist(),
            y=np.asarray(scaling.spectral_lr).tolist(),
            error_y={"type": "data", "array": np.asarray(scaling.spectral_lr_stderr).tolist()},
            mode="markers",
            name="2/λmax(H_B), measured",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=B.tolist(),
            y=np.asarray(scaling.worst_batch_lr).tolist(),
            mode="markers",
            marker={"symbol": "triangle-down-open", "size": 9},
            name="2/max λmax (sharpest batch)",
        )
    )
    fig.add_trace(go.Scatter(x=grid.tolist(), y=scaling.fitted_lr(grid).tolist(), mode="lines", name="2/λ'(B), fit"))
    rule = scaling.sqrt_rule(grid) if scaling.optimizer == "adam" else scaling.linear_rule(grid)
    name = "square-root rule" if scaling.optimizer == "adam" else "linear rule"
    fig.add_trace(
        go.Scatter(x=grid.tolist(), y=np.asarray(rule).tolist(), mode="lines", line={"dash": "dash"}, name=name)
    )
    noise = scaling.noise
    if noise is not None and np.isfinite(noise.eps_max):
        eps = np.asarray(noise.eps_opt(grid), dtype=np.float64)
        fig.add_trace(
            go.Scatter(x=grid.tolist(), y=eps.tolist(), mode="lines", line={"dash": "dashdot"}, name="ε_opt(B)")
        )
        if np.isfinite(noise.b_noise) and B[0] <= noise.b_noise <= B[-1]:
            # A vertical trace rather than a shape: shapes on log axes mix data and log10 coordinates.
            ys = np.concatenate([np.asarray(scaling.worst_batch_lr), np.asarray(scaling.spectral_lr), eps, rule])
            ys = ys[np.isfinite(ys) & (ys > 0)]
            fig.add_trace(
                go.Scatter(
                    x=[float(noise.b_noise)] * 2,
                    y=[float(ys.min()), float(ys.max())],
                    mode="lines",
                    line={"dash": "dot", "color": "gray"},
                    name=f"B_noise = {fmt(noise.b_noise, 3)} (critical batch size)",
                )
            )
    fig.update_layout(
        title={"text": f"maximal stable learning rate vs batch size ({scaling.optimizer})"},
        xaxis={"type": "log", "title": "batch size B"},
        yaxis={"type": "log", "title": "learning rate"},
        template=TEMPLATE,
    )
    return fig


# ------------------------------------------------------------------------------------------------------- sections
def _spectrum_section(spec: Any, trace: ReportTrace | None, figs: _Figures) -> str:
    if spec is None:
        return _absent("The Hessian spectrum")
    d = spec.density
    op = spec.settings.get("operator", "hessian")
    slq = pm(spec.trace.value, spec.trace.stderr)
    if trace is not None and _is_hessian(spec):
        trace_card = ("trace", _trace_card(trace))
        seen = "" if trace.source == "spectrum" else f"; the SLQ estimate of this pass: {slq}"
        trace_row = ["trace", trace.shown(), trace.how + seen]
    else:  # another operator's trace: its own number, named so
        trace_card = (f"{op} trace", slq)
        trace_row = [f"{op} trace", slq, _how(spec.trace, spec)]
    parts = [
        _cards(
            [
                ("λ_max", fmt(spec.lambda_max)),
                trace_card,
                ("Frobenius norm", pm(spec.frobenius.value, spec.frobenius.stderr)),
                ("parameters", f"{spec.num_params:,}"),
            ]
        ),
        f'<p class="note">{escape(str(op))} spectrum from one Krylov pass: {d.num_probes} probes × '
        f"{d.nodes.shape[1]} Lanczos steps, {spec.num_matvecs} matrix-vector products, {fmt(spec.wall_time, 3)} s, "
        f"seed {escape(str(spec.seed))}. Errors of SLQ estimates are standard errors across probes. The trace is the "
        "report's best one (exact when it was computed), the same in every section.</p>",
        '<div class="figs">' + figs(density_figure(d)) + figs(density_figure(d, log=True)) + "</div>",
        "<h3>Top eigenvalues</h3>",
        table(
            ["#", "eigenvalue", "Ritz residual", "error bound", "converged"],
            [
                [i + 1, float(v), float(r), float(b), "yes" if c else "NO"]
                for i, (v, r, b, c) in enumerate(
                    zip(
                        spec.eigenvalues,
                        spec.eigen_residuals,
                        spec.eigen_error_bounds,
                        spec.eigen_converged,
                        strict=True,
                    )
                )
            ],
            "eigenvalues",
        ),
        "<h3>Spectral summaries</h3>",
        table(
            ["quantity", "value", "notes"],
            [
                trace_row,
                ["Frobenius norm", _Raw(escape(pm(spec.frobenius.value, spec.frobenius.stderr))), "slq"],
                ["density support", f"[{fmt(d.lambda_min, 4)}, {fmt(d.lambda_max, 4)}]", f"σ = {fmt(d.sigma, 3)}"],
                ["re = |λ_min / λ_max|", float(spec.lla.re), "negative curvature (LLA criteria)"],
                ["Kh_0.5", float(spec.lla.kh), "fraction of large negative eigenvalues (LLA criteria)"],
            ],
        ),
    ]
    if spec.subsets is not None:
        s = spec.subsets
        parts.append(
            f'<p class="note">Across {s.traces.size} data subsets: trace standard error {fmt(s.trace_stderr, 2)}, '
            f"λ_max standard error {fmt(s.lambda_max_stderr, 2)} (the data-sampling error).</p>"
        )
    return "".join(parts)


def _surface_stats(surface: Any) -> list[list[Any]]:
    loss = np.asarray(surface.loss, dtype=np.float64)
    centre = tuple(int(np.argmin(np.abs(np.asarray(c)))) for c in surface.coords)
    rows: list[list[Any]] = [
        ["directions", f"{surface.directions.kind} (seed {surface.directions.seed})"],
        [
            "grid",
            " × ".join(str(len(c)) for c in surface.coords) + f" points on [{fmt(surface.coords[0][0], 3)}, "
            f"{fmt(surface.coords[0][-1], 3)}]",
        ],
        ["loss at the centre", float(loss[centre])],
        ["min / max loss", f"{fmt(np.nanmin(loss))} / {fmt(np.nanmax(loss))}"],
    ]
    if surface.accuracy is not None:
        rows.append(["accuracy at the centre", float(np.asarray(surface.accuracy)[centre])])
    cache = surface.settings.get("cache") or {}
    if cache:
        rows.append(["points from the cache", f"{cache.get('points_from_cache', 0)} of {loss.size}"])
    rows.append(["wall time (s)", float(surface.wall_time)])
    return rows


def _interpolation_rows(interp: Any) -> list[list[Any]]:
    a = np.asarray(interp.coords[0], dtype=np.float64)
    loss = np.asarray(interp.loss, dtype=np.float64)
    rows: list[list[Any]] = []
    ends = {}
    for value, name in ((0.0, "loss at α = 0 (model A)"), (1.0, "loss at α = 1 (model B)")):
        hit = np.flatnonzero(np.isclose(a, value, atol=1e-12))
        if hit.size:
            ends[value] = float(loss[hit[0]])
            rows.append([name, ends[value]])
    inside = (a >= 0) & (a <= 1)
    if len(ends) == 2 and inside.any():
        chord = (1 - a[inside]) * ends[0.0] + a[inside] * ends[1.0]
        rows.append(["barrier: max over α in [0, 1] of loss − chord", float(np.max(loss[inside] - chord))])
    rows.append(["wall time (s)", float(interp.wall_time)])
    return rows


def _surfaces_section(surface: Any, interpolation: Any, figs: _Figures) -> str:
    parts = ["<h3>2D surface</h3>"]
    if surface is None:
        parts.append(_absent("The 2D loss surface"))
    elif len(surface.coords) != 2:
        parts.append(
            '<div class="figs">' + figs(surface_figure(surface)) + "</div>" + table(None, _surface_stats(surface))
        )
    else:
        parts.append(
            '<p class="note">Loss w + a·d₁ + b·d₂ around the trained weights (Li et al. 2018); drag to rotate the '
            "3D view, hover for values.</p>"
            '<div class="figs">' + figs(surface_figure(surface), 520) + figs(_contour_figure(surface), 520) + "</div>"
        )
        parts.append(table(None, _surface_stats(surface)))
    parts.append("<h3>1D interpolation</h3>")
    if interpolation is None:
        parts.append(_absent("The interpolation between two models"))
    else:
        parts.append(
            '<p class="note">Loss along (1 − α)·model A + α·model B (Goodfellow, Vinyals, Saxe 2015).</p>'
            '<div class="figs">' + figs(surface_figure(interpolation), 380) + "</div>"
        )
        parts.append(table(None, _interpolation_rows(interpolation)))
    return "".join(parts)


def _sharpness_section(sh: Any, roughness: Any, trace: ReportTrace | None) -> str:
    if sh is None and roughness is None:
        return _absent("Sharpness")
    rows: list[list[Any]] = []
    if sh is not None:
        r2 = sh.rho**2 / 2
        rows.append(["loss L(w)", float(sh.loss), "", ""])
        if sh.lambda_max is not None:
            lam = float(sh.lambda_max.values[0])
            rows.append(
                ["λ_max", lam, f"Ritz residual {fmt(sh.lambda_max.residuals[0], 2)}", f"ρ²λ_max/2 = {fmt(r2 * lam, 4)}"]
            )
        else:
            rows.append(["λ_max", NOT_COMPUTED, "", ""])
        if trace is not None:
            err = trace.how if trace.method == "exact" else f"± {fmt(trace.stderr, 2)} ({trace.how})"
            rows.append(["trace", trace.value, err, f"ρ² tr/2 = {fmt(r2 * trace.value, 4)}"])
        else:
            rows.append(["trace", NOT_COMPUTED, "", ""])
        if sh.frobenius is not None:
            rows.append(["Frobenius norm", float(sh.frobenius.value), f"± {fmt(sh.frobenius.stderr, 2)}", ""])
        else:
            rows.append(["Frobenius norm", NOT_COMPUTED, "", ""])
        for label, part, pred in (
            ("SAM, first order", sh.sam_first_order, "ρ²λ_max/2 at a minimum"),
            ("SAM (p = 2, ascent)", sh.sam, "ρ²λ_max/2 at a minimum"),
            ("SAM (p = ∞, ascent)", sh.sam_inf, ""),
            ("ASAM (adaptive, p = 2)", sh.asam, ""),
        ):
            if part is None:
                rows.append([label, NOT_COMPUTED, "", ""])
                continue
            err = f"± {fmt(part.stderr, 2)}" if part.subset_values.size > 1 else f"{part.steps} ascent step(s)"
            rows.append([f"{label}, ρ = {fmt(part.rho, 3)}", float(part.value), err, pred])
        if sh.average is not None:
            a = sh.average
            rows.append(
                [
                    f"average-case, ρ = {fmt(a.rho, 3)}",
                    float(a.value),
                    f"± {fmt(a.stderr, 2)} ({a.num_samples} draws)",
                    "ρ² tr/2 at a minimum",
                ]
            )
        else:
            rows.append(["average-case", NOT_COMPUTED, "", ""])
        for label, part in (("Keskar (full space)", sh.keskar), ("Keskar (subspace)", sh.keskar_subspace)):
            if part is not None:
                rows.append([f"{label}, ε = {fmt(part.eps, 3)}", float(part.value), "% loss increase", ""])
    if roughness is not None:
        rows.append(
            [
                "roughness index",
                float(roughness.value),
                f"± {fmt(roughness.stderr, 2)}",
                f"{roughness.total_variations.size} directions, span {fmt(roughness.span, 3)}",
            ]
        )
    else:
        rows.append(["roughness index", NOT_COMPUTED, "", ""])
    intro = ""
    if sh is not None:
        intro = (
            f'<p class="note">{sh.num_params:,} parameters, ρ = {fmt(sh.rho, 3)}, seed {escape(str(sh.seed))}, '
            f"{sh.num_matvecs} Hessian-vector products, {fmt(sh.wall_time, 3)} s. The last column is the quadratic "
            "model's prediction.</p>"
        )
    else:
        intro = _absent("λ_max, trace, Frobenius norm, SAM and average sharpness")
    return intro + table(["measure", "value", "error / detail", "quadratic prediction"], rows, "sharpness")


def _stability_label(rep: Any) -> str:
    batch = "full batch" if rep.batch_size is None else f"batch size {rep.batch_size} of {rep.num_samples}"
    return f"{rep.optimizer} at lr = {fmt(rep.lr)} ({batch})"


def _stability_section(reports: Sequence[Any], notes: Sequence[str]) -> str:
    if not reports:
        return _absent("Stability verdicts")
    parts = [
        '<p class="note">Linear stability of each optimizer setting at the current weights. The verdict uses the exact '
        "and necessary criteria only; sufficient and heuristic ones are shown for information. Margin = "
        "1 − value / threshold.</p>",
        table(
            ["setting", "verdict", "max stable lr", "bound"],
            [
                [
                    _stability_label(r),
                    _badge(r.stable),
                    float(r.max_stable_lr),
                    "exact" if r.max_stable_lr_is_exact else "upper bound (necessary conditions)",
                ]
                for r in reports
            ],
            "verdicts",
        ),
    ]
    for rep in reports:
        parts.append(f"<h3>{escape(_stability_label(rep))} {_badge(rep.stable)}</h3>")
        rows = []
        for c in rep.criteria:
            binding = c.kind in ("exact", "necessary")
            verdict = _badge(c.stable) if binding else _badge(c.stable, "holds", "fails")
            rows.append(
                [
                    c.name,
                    c.kind,
                    float(c.value),
                    float(c.threshold),
                    f"{100 * c.margin:+.1f}%",
                    float(c.max_stable_lr),
                    verdict,
                    c.reference,
                ]
            )
        parts.append(
            table(
                ["criterion", "kind", "value", "threshold", "margin", "max stable lr", "verdict", "reference"],
                rows,
                "criteria",
            )
        )
        for note in rep.notes:
            parts.append(f'<p class="note">note: {escape(str(note))}</p>')
    for note in notes:
        parts.append(f'<p class="note">{escape(str(note))}</p>')
    return "".join(parts)


def _scaling_section(sc: Any, figs: _Figures) -> str:
    if sc is None:
        return _absent("Batch-size scaling")
    adam = sc.optimizer == "adam"
    rules = sc.sqrt_rule() if adam else sc.linear_rule()
    fitted = sc.fit.predict(sc.batch_sizes)
    eps = sc.eps_opt
    head = [
        "B",
        "λ_max(H_B) mean ± se",
        "std",
        "max",
        "fit a + b·x(B)",
        "2/mean (pred. max lr)",
        "2/max",
        "sqrt rule" if adam else "linear rule",
    ]
    if eps is not None:
        head.append("ε_opt(B)")
    rows = []
    for i, B in enumerate(sc.batch_sizes):
        row = [
            f"{int(B)} (full)" if int(B) == sc.num_samples else str(int(B)),
            _Raw(escape(pm(sc.lambda_mean[i], sc.lambda_stderr[i]))),
            float(sc.lambda_std[i]),
            float(sc.lambda_worst[i]),
            float(fitted[i]),
            float(sc.spectral_lr[i]),
            float(sc.worst_batch_lr[i]),
            float(rules[i]),
        ]
        if eps is not None:
            row.append(float(eps[i]))
        rows.append(row)
    f, fb = sc.fit, sc.fit_bulk
    cards = [
        ("λ_max(H), full data", fmt(sc.lambda_full)),
        ("regime", sc.regime),
        (f"max stable lr at B = {int(sc.batch_sizes[0])}", fmt(sc.spectral_lr[0], 4)),
    ]
    if sc.noise is not None:
        cards.append(("critical batch size B_noise", pm(sc.noise.b_noise, sc.noise.b_noise_stderr)))
        cards.append(("B_simple", pm(sc.noise.b_simple, sc.noise.b_simple_stderr)))
    fits = table(
        ["fit", "a", "b", "χ²/dof", "max rel. residual"],
        [
            [
                "a + b·x(B) (outlier)",
                _Raw(escape(pm(f.a, f.a_stderr))),
                _Raw(escape(pm(f.b, f.b_stderr))),
                float(f.chi2_per_dof),
                float(f.max_relative_residual),
            ],
            [
                "a + b·√x(B) (bulk)",
                _Raw(escape(pm(fb.a, fb.a_stderr))),
                _Raw(escape(pm(fb.b, fb.b_stderr))),
                float(fb.chi2_per_dof),
                float(fb.max_relative_residual),
            ],
        ],
    )
    return (
        _cards(cards)
        + f'<p class="note">{sc.num_batches} random minibatches per batch size, seed {sc.seed}, optimizer '
        f"{escape(sc.optimizer)}; x(B) = (n − B)/(B(n − 1)); rules anchored at B = {sc.anchor_batch_size}, "
        f"lr = {fmt(sc.anchor_lr, 4)} ({escape(sc.anchor_kind)}). {sc.num_matvecs} Hessian-vector products, "
        f"{fmt(sc.wall_time, 3)} s.</p>"
        + '<div class="figs">'
        + figs(_scaling_figure(sc))
        + "</div>"
        + table(head, rows, "scaling")
        + fits
    )


def _provenance_section(prov: Provenance | None, wall_times: dict[str, float]) -> str:
    versions = prov.versions if prov is not None else library_versions()
    parts = []
    if prov is None:
        parts.append(_absent("Model and data hashes"))
    else:
        parts.append(
            table(
                None,
                [
                    ["model", prov.model],
                    [
                        "model hash (sha256 of weights, buffers, repr)",
                        _Raw(f"<code>{escape(str(prov.model_hash))}</code>"),
                    ],
                    ["data fingerprint", _Raw(f"<code>{escape(str(prov.data_fingerprint))}</code>")],
                    ["parameters analysed", "-" if prov.num_params is None else f"{prov.num_params:,}"],
                    ["examples", "-" if prov.num_samples is None else f"{prov.num_samples:,}"],
                    ["BatchNorm / dropout policy", prov.mode_policy],
                    ["BatchNorm / dropout layers", f"{prov.batchnorm_layers} / {prov.dropout_layers}"],
                    ["dtype / device", f"{prov.dtype} / {prov.device}"],
                    ["created (UTC)", prov.created],
                ],
                "provenance",
            )
        )
    parts.append("<h3>Library versions</h3>" + table(["library", "version"], sorted(versions.items())))
    if prov is not None and prov.seeds:
        parts.append("<h3>Seeds</h3>" + table(["step", "seed"], [[k, str(v)] for k, v in prov.seeds.items()]))
    if wall_times:
        total = sum(wall_times.values())
        rows = [[k, float(v)] for k, v in wall_times.items()] + [["total", float(total)]]
        parts.append("<h3>Wall times (s)</h3>" + table(["step", "seconds"], rows, "wall-times"))
    if prov is not None and prov.settings:
        text = json.dumps(prov.settings, indent=2, default=_jsonable, sort_keys=True)
        parts.append(f"<h3>Settings</h3><pre>{escape(text)}</pre>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, as given to :func:`build_report` (``to_dict`` is the report's JSON)."""

    title: str
    spectrum: Any = None
    surface: Any = None
    interpolation: Any = None
    sharpness: Any = None
    stability: tuple[Any, ...] = ()
    scaling: Any = None
    roughness: Any = None
    provenance: Provenance | None = None
    notes: tuple[str, ...] = ()

    def wall_times(self) -> dict[str, float]:
        """Seconds per step: the provenance's own entries, then each result's ``wall_time``."""
        times = dict(self.provenance.wall_times) if self.provenance is not None else {}
        for name in ("spectrum", "surface", "interpolation", "sharpness", "scaling", "roughness"):
            result = getattr(self, name)
            if result is not None and name not in times:
                times[name] = float(result.wall_time)
        for rep in self.stability:
            times.setdefault(f"stability: {_stability_label(rep)}", float(rep.wall_time))
        return times

    def trace(self) -> ReportTrace | None:
        """The trace every section shows (:func:`best_trace`)."""
        return best_trace(self.spectrum, self.sharpness)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers of every section (``None`` for absent ones); ``"trace"`` is the one the page shows."""

        def surf(s: Any) -> dict[str, Any] | None:
            if s is None:
                return None
            return {
                "coords": [np.asarray(c).tolist() for c in s.coords],
                "loss": np.asarray(s.loss).tolist(),
                "accuracy": None if s.accuracy is None else np.asarray(s.accuracy).tolist(),
                "directions": {"kind": s.directions.kind, "seed": s.directions.seed},
                "wall_time": s.wall_time,
            }

        def own(r: Any) -> Any:
            return None if r is None else r.to_dict()

        return {
            "title": self.title,
            "trace": own(self.trace()),
            "spectrum": own(self.spectrum),
            "surface": surf(self.surface),
            "interpolation": surf(self.interpolation),
            "sharpness": own(self.sharpness),
            "stability": [r.to_dict() for r in self.stability],
            "scaling": own(self.scaling),
            "roughness": own(self.roughness),
            "provenance": own(self.provenance),
            "wall_times": self.wall_times(),
            "notes": list(self.notes),
        }


def _headline(data: ReportData) -> str:
    cards: list[tuple[str, Any]] = []
    prov = data.provenance
    if prov is not None and prov.num_params is not None:
        cards.append(("parameters / examples", f"{prov.num_params:,} / {prov.num_samples:,}"))
    if data.sharpness is not None:
        cards.append(("loss", fmt(data.sharpness.loss)))
    if data.spectrum is not None:
        cards.append(("λ_max", fmt(data.spectrum.lambda_max)))
    trace = data.trace()
    if trace is not None:
        cards.append(("trace", _trace_card(trace)))
    for rep in data.stability:
        cards.append((f"{rep.optimizer} @ lr {fmt(rep.lr, 3)}", _badge(rep.stable)))
    if data.scaling is not None and data.scaling.noise is not None:
        cards.append(("critical batch size", fmt(data.scaling.noise.b_noise, 3)))
    return _cards(cards) if cards else ""


def render(data: ReportData) -> str:
    """The HTML page of ``data``."""
    figs = _Figures()
    bodies = {
        "spectrum": _spectrum_section(data.spectrum, data.trace(), figs),
        "surfaces": _surfaces_section(data.surface, data.interpolation, figs),
        "sharpness": _sharpness_section(data.sharpness, data.roughness, data.trace()),
        "stability": _stability_section(data.stability, data.notes),
        "scaling": _scaling_section(data.scaling, figs),
        "provenance": _provenance_section(data.provenance, data.wall_times()),
    }
    prov = data.provenance
    subtitle = "landscape loss-landscape report"
    if prov is not None:
        subtitle += f" · model {prov.model} · {prov.mode_policy} · created {prov.created} UTC"
    nav = "".join(f'<a href="#{key}">{escape(name)}</a>' for key, name in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{escape(name)}</h2>{bodies[key]}</section>' for key, name in SECTIONS)
    versions = prov.versions if prov is not None else library_versions()
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(data.title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(data.title)}</h1><p>{escape(subtitle)}</p>{_headline(data)}<nav>{nav}</nav></header>"
        f"<main>{sections}</main>"
        f"<footer>Generated by landscape {escape(versions.get('landscape', '?'))} with torch "
        f"{escape(versions.get('torch', '?'))}; self-contained (plotly.js embedded), works offline.</footer>"
        f"{_json_script(data.to_dict())}{RESIZE if figs.count else ''}</body></html>\n"
    )


def build_report(
    path: str | os.PathLike[str] | None = None,
    *,
    title: str = "Loss landscape report",
    spectrum: Any = None,
    surface: Any = None,
    interpolation: Any = None,
    sharpness: Any = None,
    stability: Any = None,
    scaling: Any = None,
    roughness: Any = None,
    provenance: Provenance | None = None,
    notes: Sequence[str] = (),
) -> str:
    """One self-contained HTML page of the given results; sections without a result say "not computed".

    Parameters
    ----------
    path : path-like, optional
        Where to write the page (UTF-8; parent folders are created).
    title : str
        Page title (escaped, like every other user string).
    spectrum : Spectrum, optional
        SLQ density (linear and log), top eigenvalues with residuals, trace and Frobenius norm with errors.
    surface : Surface, optional
        A 2D surface: interactive 3D view and contour map (a 1D one is drawn as a curve).
    interpolation : Surface, optional
        A 1D interpolation between two models (:func:`landscape.surface.interpolate`).
    sharpness : Sharpness, optional
        lambda_max, trace, Frobenius norm, SAM/ASAM, average and Keskar sharpness with their errors.
    stability : StabilityReport or sequence of them, optional
        One criteria table per optimizer setting (name, kind, value, threshold, margin, verdict).
    scaling : ScalingReport, optional
        Batch-size table and learning-rate plot.
    roughness : RoughnessIndex, optional
        Added to the sharpness table.
    provenance : Provenance, optional
        Model/data hashes, seeds, versions, settings, mode policy, wall times
        (:func:`landscape.report.collect_provenance`).
    notes : sequence of str
        Extra remarks shown under the stability section (e.g. how an Adam preconditioner was obtained).

    Returns
    -------
    str
        The HTML.
    """
    if stability is None:
        reports: tuple[Any, ...] = ()
    elif hasattr(stability, "criteria"):
        reports = (stability,)
    else:
        reports = tuple(stability)
    data = ReportData(
        title=title,
        spectrum=spectrum,
        surface=surface,
        interpolation=interpolation,
        sharpness=sharpness,
        stability=reports,
        scaling=scaling,
        roughness=roughness,
        provenance=provenance,
        notes=tuple(notes),
    )
    html = render(data)
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    return html
