"""One self-contained HTML file with every analysis of a model: spectrum, surfaces, sharpness, stability, scaling.

The page is rendered from the Jinja2 templates in ``landscape/report/templates`` (``report.html``, one template per
section, ``macros.html``, ``report.css``) with autoescaping: every user string is escaped (by :func:`html.escape`);
plotly's figures and the embedded JSON are the only markup inserted as is. The page embeds plotly.js once (with the
first figure, no CDN), so it opens with the network off. Every section is present; one whose result was not given
says "not computed". The numbers shown are also embedded as JSON (``<script type="application/json"
id="landscape-data">``) for machines.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from jinja2.ext import Extension
from markupsafe import Markup

from landscape._json import jsonable, strict_json
from landscape.plot.interactive import density_figure, surface_figure
from landscape.plot.report import (
    block_density_figure,
    block_heatmap_figure,
    card_html,
    contour_figure,
    scaling_figure,
)
from landscape.report.provenance import Provenance, library_versions

NOT_COMPUTED = "not computed"

SECTIONS = (
    ("spectrum", "Hessian spectrum"),
    ("surfaces", "Loss surfaces"),
    ("sharpness", "Sharpness"),
    ("stability", "Stability of optimizer settings"),
    ("scaling", "Batch-size scaling"),
    ("provenance", "Provenance"),
)
#: Shown only when a block-spectra result is given (after the spectrum), so a report without one is unchanged.
BLOCKS_SECTION = ("blocks", "Block spectra")


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


# ------------------------------------------------------------------------------------------------------- sections
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


def _stability_label(rep: Any) -> str:
    batch = "full batch" if rep.batch_size is None else f"batch size {rep.batch_size} of {rep.num_samples}"
    return f"{rep.optimizer} at lr = {fmt(rep.lr)} ({batch})"


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
    blocks: Any = None

    def sections(self) -> tuple[tuple[str, str], ...]:
        """The page's sections: :data:`SECTIONS`, with :data:`BLOCKS_SECTION` after the spectrum when given."""
        if self.blocks is None:
            return SECTIONS
        return SECTIONS[:1] + (BLOCKS_SECTION,) + SECTIONS[1:]

    def wall_times(self) -> dict[str, float]:
        """Seconds per step: the provenance's own entries, then each result's ``wall_time``."""
        times = dict(self.provenance.wall_times) if self.provenance is not None else {}
        for name in ("spectrum", "blocks", "surface", "interpolation", "sharpness", "scaling", "roughness"):
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

        blocks = {} if self.blocks is None else {"blocks": own(self.blocks)}  # absent when not asked for
        return {
            "title": self.title,
            "trace": own(self.trace()),
            "spectrum": own(self.spectrum),
            **blocks,
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


# ------------------------------------------------------------------------------------------------------- templates
class _OneLine(Extension):
    """Templates are written one element a line; the page comes out as one line, as an HTML page needs no breaks.

    A line break (with the indentation around it) next to a tag, a ``{% statement %}`` or a ``{{ expression }}``
    goes; one inside text becomes a space, so a sentence in a template breaks between two words. ``<style>`` and
    ``<script>`` elements and the line of ``<!DOCTYPE html>`` keep theirs; ``.css`` templates are left as written.
    """

    KEPT = re.compile(r"(<!DOCTYPE html>\n|<style\b.*?</style>|<script\b.*?</script>)|[ \t]*\n\s*(?=\S)", re.S)

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if not (name or "").endswith(".html"):
            return source

        def join(m: re.Match[str]) -> str:
            if m.group(1):
                return m.group(1)
            touches = source[m.start() - 1 : m.start()] in (">", "}") or source[m.end()] in ("<", "{")
            return "" if touches else " "

        return self.KEPT.sub(join, source)


def _escaped(value: Any) -> Any:
    """Every expression's value as markup: :func:`html.escape` of its text (``&#x27;`` for ``'``, where markupsafe
    would write ``&#39;``), unless it is markup already (a macro's output, a figure, the JSON)."""
    return value if hasattr(value, "__html__") else Markup(escape(str(value)))


def _is_number_cell(value: Any) -> bool:
    """A table cell that holds a number (right-aligned, :func:`fmt`); a bool is text."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class _Figures:
    """Each figure as its card's fragment (:func:`landscape.plot.report.card_html`); plotly.js is embedded once, with
    the first figure. ``count`` says how many were drawn (the page redraws them when their cards change size)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig: Any, height: int = 420) -> Markup:
        html = card_html(fig, height, include_plotlyjs=self.count == 0)
        self.count += 1
        return Markup(html)  # plotly's own markup and script


def _json_script(data: Any) -> Markup:
    text = json.dumps(strict_json(data), allow_nan=False)
    # "<", ">" and "&" occur only inside JSON strings, where their \\u003c-style escapes mean the same; the HTML
    # parser then never sees "</script>" or "<!--" in the data.
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, code)
    return Markup('<script type="application/json" id="landscape-data">' + text + "</script>")


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("landscape.report", "templates"),
    autoescape=True,
    finalize=_escaped,
    undefined=jinja2.StrictUndefined,
    extensions=[_OneLine],
)
_TEMPLATES.filters.update(
    fmt=fmt,
    thousands="{:,}".format,
    pretty_json=lambda x: json.dumps(x, indent=2, default=jsonable, sort_keys=True),
)
_TEMPLATES.tests["number_cell"] = _is_number_cell
_TEMPLATES.globals.update(
    not_computed=NOT_COMPUTED,
    sections=SECTIONS,
    pm=pm,
    zip=partial(zip, strict=True),
    how=_how,
    is_hessian=_is_hessian,
    stability_label=_stability_label,
    surface_stats=_surface_stats,
    interpolation_rows=_interpolation_rows,
    density_figure=density_figure,
    surface_figure=surface_figure,
    contour_figure=contour_figure,
    scaling_figure=scaling_figure,
    block_density_figure=block_density_figure,
    block_heatmap_figure=block_heatmap_figure,
)


def render(data: ReportData) -> str:
    """The HTML page of ``data``."""
    prov = data.provenance
    page = _TEMPLATES.get_template("report.html").render(
        data=data,
        sections=data.sections(),
        prov=prov,
        trace=data.trace(),
        versions=prov.versions if prov is not None else library_versions(),
        figures=_Figures(),
        data_json=_json_script(data.to_dict()),
    )
    return page + "\n"  # Jinja drops the template's last line break


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
    blocks: Any = None,
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
    blocks : BlockSpectra, optional
        A "Block spectra" section after the spectrum (only when given): the blocks' densities, the Jensen-Shannon
        heatmap and the table per block (:func:`landscape.block_spectra`).

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
        blocks=blocks,
    )
    html = render(data)
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    return html
