"""The HTML report: self-contained, every section present or marked absent, numbers and escaping right; the
``landscape demo`` and ``landscape report`` commands run for real in subprocesses."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from html import escape as html_escape

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem, data, models, training
from landscape.data import data_fingerprint
from landscape.linalg.results import Estimate
from landscape.report import (
    OptimizerSetting,
    analyse,
    build_report,
    collect_provenance,
    model_hash,
    write_report,
)
from landscape.report.html import NOT_COMPUTED, SECTIONS, fmt, pm
from landscape.store import decode, encode

NUM_FIGURES = 6  # density (linear, log), 3D surface, contour, interpolation, batch-size scaling


def tiny_problem(seed: int = 0) -> tuple[Problem, nn.Module]:
    X, y = data.gaussian_mixture(n=160, dim=6, num_classes=3, seed=seed)
    model = models.mlp(6, (5,), 3, seed=seed)
    initial = copy.deepcopy(model)
    training.train(model, X, y, steps=40, lr=0.1, batch_size=32, seed=seed)
    return Problem(model, nn.CrossEntropyLoss(), (X, y), batch_size=80), initial


SETTINGS = (
    OptimizerSetting("sgd", 0.1, batch_size=16),
    OptimizerSetting("adam", 1e-3, batch_size=16),
    OptimizerSetting("sam", 0.1, rho=0.05),
)


@contextlib.contextmanager
def one_thread():
    """One intra-op thread while the tiny analyses run (threads only wait on each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_analyses(problem: Problem, initial: nn.Module, cache=None):
    with one_thread():
        return _tiny_analyses(problem, initial, cache)


def _tiny_analyses(problem: Problem, initial: nn.Module, cache):
    return analyse(
        problem,
        optimizers=SETTINGS,
        batch_sizes=[16, 64],
        num_batches=2,
        top_k=2,
        num_probes=2,
        num_steps=8,
        resolution=5,
        interpolate_from=initial,
        interpolation_resolution=7,
        sam_steps=2,
        num_samples=3,
        num_matvecs=8,
        roughness_directions=3,
        cache=cache,
    )


def full_report(results, provenance, path=None, *, title: str) -> str:
    """The report with every section of ``results`` (from :func:`tiny_analyses`), written to ``path`` if given."""
    return build_report(
        path,
        title=title,
        spectrum=results.spectrum,
        surface=results.surface,
        interpolation=results.interpolation,
        sharpness=results.sharpness,
        stability=results.stability,
        scaling=results.scaling,
        roughness=results.roughness,
        provenance=provenance,
        notes=results.notes,
    )


@pytest.fixture(scope="module")
def full():
    problem, initial = tiny_problem()
    results = tiny_analyses(problem, initial)
    provenance = collect_provenance(problem, seeds={"all": 0}, settings={"note": "tiny"}, wall_times=results.wall_times)
    html = full_report(results, provenance, title="tiny report")
    return problem, results, provenance, html


def section(html: str, key: str) -> str:
    """The section's markup without its scripts (the plotly.js bundle holds many words)."""
    start = html.index(f'<section id="{key}">')
    body = html[start : html.index("</section>", start)]
    return re.sub(r"<script\b.*?</script>", "", body, flags=re.S)


ABSENT = '<p class="absent">'  # every absent result: "...: not computed."


def embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="landscape-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


# --------------------------------------------------------------------------------------------- self-contained
def test_report_is_self_contained_with_plotly_inline_once(full):
    html = full[3]
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I), "no external (or any) script src"
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?(https?:)?//", html, re.I), "no external stylesheet"
    assert not re.search(r"<img[^>]*src\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1, "the plotly.js bundle is embedded exactly once"
    assert html.count('class="plotly-graph-div"') == NUM_FIGURES


def test_every_section_present_for_the_inputs_given(full):
    html = full[3]
    for key, name in SECTIONS:
        body = section(html, key)
        assert name in body
        assert ABSENT not in body, key
    assert "Top eigenvalues" in section(html, "spectrum")
    assert "1D interpolation" in section(html, "surfaces") and "loss contours" in html


def test_absent_inputs_say_not_computed():
    html = build_report(title="empty")
    for key, _ in SECTIONS:
        if key != "provenance":
            assert ABSENT in section(html, key) and NOT_COMPUTED in section(html, key), key
    assert "plotly-graph-div" not in html
    assert "torch" in section(html, "provenance"), "library versions are recorded even without a problem"


def test_a_single_result_fills_only_its_section(full):
    _, results, _, _ = full
    html = build_report(spectrum=results.spectrum)
    assert ABSENT not in section(html, "spectrum")
    for key in ("surfaces", "sharpness", "stability", "scaling"):
        assert ABSENT in section(html, key)
    assert html.count('class="plotly-graph-div"') == 2


# --------------------------------------------------------------------------------------------- numbers
def test_spectrum_numbers_match_the_result(full):
    _, results, _, html = full
    spec = results.spectrum
    body = section(html, "spectrum")
    for v in spec.eigenvalues:
        assert f">{fmt(v)}<" in body
    assert pm(spec.trace.value, spec.trace.stderr) in body
    assert pm(spec.frobenius.value, spec.frobenius.stderr) in body
    assert embedded(html)["spectrum"]["trace"] == pytest.approx(float(spec.trace.value))


def test_sharpness_and_stability_numbers_match_the_results(full):
    _, results, _, html = full
    sh = results.sharpness
    body = section(html, "sharpness")
    assert f">{fmt(sh.lambda_max.values[0])}<" in body
    assert f">{fmt(sh.trace.value)}<" in body
    assert f">{fmt(sh.sam.value)}<" in body and f">{fmt(sh.average.value)}<" in body
    assert f">{fmt(results.roughness.value)}<" in body
    body = section(html, "stability")
    assert len(results.stability) == 3
    for rep in results.stability:
        assert f">{fmt(rep.max_stable_lr)}<" in body
        for c in rep.criteria:
            assert html_escape(c.name) in body
            assert f">{fmt(c.value)}<" in body and f">{fmt(c.threshold)}<" in body
            assert f"{100 * c.margin:+.1f}%" in body
    assert body.count('class="badge stable"') + body.count('class="badge unstable"') >= 2 * len(results.stability)
    assert "Adam&#x27;s second moment" in body, "how the Adam preconditioner was obtained is said"
    verdicts = [r["stable"] for r in embedded(html)["stability"]]
    assert verdicts == [r.stable for r in results.stability]


def test_scaling_and_provenance_numbers_match(full):
    problem, results, provenance, html = full
    sc = results.scaling
    body = section(html, "scaling")
    for i, B in enumerate(sc.batch_sizes):
        assert f">{fmt(sc.spectral_lr[i])}<" in body
        assert pm(sc.lambda_mean[i], sc.lambda_stderr[i]) in body
        assert str(int(B)) in body
    body = section(html, "provenance")
    assert provenance.model_hash == model_hash(problem.model) and provenance.model_hash in body
    assert provenance.data_fingerprint == data_fingerprint(problem._data) and provenance.data_fingerprint in body
    assert f">{torch.__version__}<" in body and f">{np.__version__}<" in body
    assert provenance.mode_policy.startswith("eval mode") and "running statistics" in body


def _shown_traces(html: str) -> dict[str, str]:
    """The trace as the header card, the spectrum's card and table, and the sharpness table show it."""
    header = html[html.index("<header>") : html.index("</header>")]
    card = r'<div class="label">trace</div><div class="value">([^<]*)<div class="how">'
    spectrum, sharpness = section(html, "spectrum"), section(html, "sharpness")
    return {
        "header card": re.search(card, header).group(1),
        "spectrum card": re.search(card, spectrum).group(1),
        "spectrum table": re.search(r"<tr><td>trace</td><td>([^<]*)</td>", spectrum).group(1),
        "sharpness table": re.search(r'<tr><td>trace</td><td class="num">([^<]*)</td>', sharpness).group(1),
    }


def _estimate(value: float, stderr: float, method: str) -> Estimate:
    matvecs = 0 if method == "exact" else 9
    return Estimate(value=value, stderr=stderr, num_matvecs=matvecs, seed=None, method=method, wall_time=0.0)


@pytest.mark.parametrize(
    ("sharpness_trace", "expected"),
    [
        ("exact", "exact, second-order backpropagation"),  # exact wins over any estimate
        ("hutch++ with a smaller error", "hutch++, 9 Hessian-vector products"),
        ("hutch++ with a larger error", "SLQ, 2 probes"),
    ],
)
def test_header_spectrum_and_sharpness_show_one_trace_the_best_one(full, sharpness_trace, expected):
    _, results, _, _ = full
    slq = results.spectrum.trace
    # A value apart from the SLQ estimate, so a section that still showed the SLQ value would be caught.
    other = float(slq.value) + 1.5
    trace = {
        "exact": _estimate(other, 0.0, "exact"),
        "hutch++ with a smaller error": _estimate(other, float(slq.stderr) / 4, "hutch++"),
        "hutch++ with a larger error": _estimate(other, float(slq.stderr) * 4, "hutch++"),
    }[sharpness_trace]
    sharp = dataclasses.replace(results.sharpness, trace=trace)
    html = build_report(spectrum=results.spectrum, sharpness=sharp)
    best = slq if expected.startswith("SLQ") else trace
    value = fmt(best.value) if best.method == "exact" else pm(best.value, best.stderr)
    shown = _shown_traces(html)
    assert shown["sharpness table"] == fmt(best.value)  # its error has a column of its own
    assert {shown["header card"], shown["spectrum card"], shown["spectrum table"]} == {value}, shown
    header = html[html.index("<header>") : html.index("</header>")]
    assert f'<div class="how">{expected}</div>' in header
    assert expected in section(html, "sharpness") and expected in section(html, "spectrum")
    data = embedded(html)["trace"]
    assert data["value"] == pytest.approx(float(best.value)) and data["how"] == expected


def test_a_report_without_the_spectrum_shows_the_sharpness_trace_in_its_header(full):
    _, results, _, _ = full
    html = build_report(sharpness=results.sharpness)
    header = html[html.index("<header>") : html.index("</header>")]
    assert re.search(r'<div class="label">trace</div><div class="value">([^<]*)<', header).group(1) == (
        fmt(results.sharpness.trace.value)
        if results.sharpness.trace.method == "exact"
        else pm(results.sharpness.trace.value, results.sharpness.trace.stderr)
    )


def test_model_hash_sees_weights_and_buffers():
    a = models.mlp(4, (3,), 2, seed=0)
    b = copy.deepcopy(a)
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert model_hash(a) != model_hash(b)


# --------------------------------------------------------------------------------------------- escaping
def test_user_strings_are_escaped(full):
    problem, results, _, _ = full
    evil = "<script>alert('x')</script>"
    prov = collect_provenance(problem, model='<img src=x onerror="alert(1)">', settings={"data": "</pre>" + evil})
    html = build_report(title=evil, provenance=prov, stability=results.stability, notes=[evil])
    assert evil not in html and "<img src=x" not in html and "</pre><script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert embedded(html)["title"] == evil, "the embedded JSON keeps the text, escaped for the HTML parser"


# --------------------------------------------------------------------------------------------- cache
def test_results_survive_the_cache_encoding(full):
    _, results, _, _ = full
    for r in (results.sharpness, results.scaling, results.roughness, results.interpolation, *results.stability):
        back = decode(json.loads(json.dumps(encode(r), allow_nan=False)))
        assert type(back) is type(r)
        if hasattr(r, "summary"):
            assert back.summary() == r.summary()
        else:
            np.testing.assert_array_equal(back.loss, r.loss)


def test_a_second_run_reads_every_result_from_the_cache(tmp_path):
    problem, initial = tiny_problem(seed=1)
    first = tiny_analyses(problem, initial, cache=tmp_path / "landscape.h5")
    second = tiny_analyses(problem, initial, cache=tmp_path / "landscape.h5")
    assert not any(first.cache["from_cache"].values())
    assert all(second.cache["from_cache"].values()), second.cache
    assert second.cache["surface_points_from_cache"] == second.cache["surface_points"] == 25
    assert second.sharpness.summary() == first.sharpness.summary()
    assert [r.to_dict()["criteria"] for r in second.stability] == [r.to_dict()["criteria"] for r in first.stability]
    path = write_report(tmp_path, second, collect_provenance(problem), title="cached")
    assert path == tmp_path / "report.html"
    assert json.loads((tmp_path / "report.json").read_text())["cache"]["spectrum_from_cache"] is True


# --------------------------------------------------------------------------------------------- command line
def landscape(*args: str, cwd=None) -> subprocess.CompletedProcess:
    # One OpenMP thread: the problems are tiny, and threads waiting on each other on a busy CI machine cost minutes.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )


TINY_REPORT = (
    "--resolution", "5", "--probes", "2", "--steps", "8", "--top-k", "2", "--batch-sizes", "64",
    "--num-batches", "2", "--optimizer", "sgd:0.1", "--optimizer", "sam", "--sgd-batch-size", "32",
    "--data", "synthetic", "--quiet",
)  # fmt: skip


@pytest.mark.slow
def test_report_command_writes_the_page_and_a_second_run_hits_the_cache(tmp_path):
    out = tmp_path / "r"
    first = landscape("report", "--out", str(out), *TINY_REPORT)
    assert first.returncode == 0, first.stderr
    assert "report:" in first.stdout and "spectrum computed" in first.stdout
    html = (out / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == NUM_FIGURES
    assert (out / "landscape.h5").exists()
    second = landscape("report", "--out", str(out), "--json", *TINY_REPORT)
    assert second.returncode == 0, second.stderr
    numbers = json.loads(second.stdout)
    assert all(numbers["cache"]["from_cache"].values()), numbers["cache"]
    assert numbers["cache"]["surface_points_from_cache"] == 25
    assert [r["optimizer"] for r in numbers["stability"]] == ["sgd", "sam"]


def test_report_command_rejects_an_unknown_optimizer(tmp_path):
    r = landscape("report", "--out", str(tmp_path), "--optimizer", "rmsprop")
    assert r.returncode == 2 and "--optimizer" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_command_with_no_arguments_writes_the_report(tmp_path):
    r = landscape("demo", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "landscape-out"
    html = (out / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') == NUM_FIGURES
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["provenance"]["settings"]["test_accuracy"] > 0.8
    assert [r["optimizer"] for r in numbers["stability"]] == ["sgd", "adam", "sam"]
    assert ABSENT not in html


def test_each_section_hands_its_freed_memory_back_before_the_next(monkeypatch):
    """Between sections the C allocator's free pages go back to the system (``malloc_trim`` through
    ``memory.release_free_memory``), once per section timed, with the size of one of the problem's vectors."""
    from landscape.report import analyses as module

    calls = []
    monkeypatch.setattr(module, "release_free_memory", lambda nbytes, device="cpu": calls.append((nbytes, device)))
    problem, _ = tiny_problem()
    with one_thread():
        results = analyse(
            problem,
            top_k=2,
            num_probes=1,
            num_steps=6,
            resolution=3,
            sam_steps=1,
            num_samples=2,
            num_matvecs=4,
            roughness_directions=0,
        )
    assert len(calls) == len(results.wall_times) == 3  # spectrum, surface, sharpness
    vector_bytes = problem.num_params * torch.empty((), dtype=problem.dtype).element_size()
    assert set(calls) == {(vector_bytes, problem.device)}
