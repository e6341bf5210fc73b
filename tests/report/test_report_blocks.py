"""The report's "Block spectra" section: present only when asked for (the page without it is unchanged), its numbers
and figures from the result, its JSON, and the block spectra read back from the cache by a second ``analyse``."""

from __future__ import annotations

import json

import pytest

from landscape.report import analyse, build_report, collect_provenance, write_report
from landscape.report.html import BLOCKS_SECTION, SECTIONS, fmt
from tests.report.test_report import embedded, one_thread, section, tiny_problem

BLOCKS = {"by": "parameter", "k": 2, "num_probes": 2, "num_steps": 8}


#: Everything but the spectrum and the sharpness (always run) off, both as small as they go.
SMALL = dict(top_k=2, num_probes=2, num_steps=8, resolution=0, sam_steps=1, num_samples=2, num_matvecs=4)


def small_analyses(problem, cache=None, blocks=BLOCKS):
    """The spectrum, the sharpness and the block spectra; nothing else."""
    with one_thread():
        return analyse(problem, batch_sizes=(), roughness_directions=0, **SMALL, blocks=blocks, cache=cache)


@pytest.fixture(scope="module")
def results():
    problem, _ = tiny_problem()
    return problem, small_analyses(problem)


def test_the_section_shows_the_blocks_table_figures_and_json(results):
    _, res = results
    bs = res.blocks
    assert bs.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    html = build_report(spectrum=res.spectrum, blocks=bs)
    key, name = BLOCKS_SECTION
    assert f'<a href="#{key}">{name}</a>' in html
    assert html.index('<section id="spectrum">') < html.index(f'<section id="{key}">') < html.index('id="surfaces"')
    body = section(html, key)
    for n, top, fro in zip(bs.names, bs.lambda_max, bs.frobenius, strict=True):
        assert f"<td>{n}</td>" in body and f">{fmt(top)}<" in body and f">{fmt(fro)}<" in body
    assert "Jensen-Shannon distance" in body and "Block-diagonal approximation" in body
    assert body.count('class="fig"') == 2 and html.count('class="plotly-graph-div"') == 4  # + the spectrum's two
    assert "block heterogeneity (Jensen-Shannon distance)" in html and "block densities" in html
    data = embedded(html)["blocks"]
    assert data["names"] == list(bs.names) and data["lambda_max"] == pytest.approx(bs.lambda_max.tolist())


def test_without_blocks_the_page_has_no_such_section(results):
    _, res = results
    html = build_report(spectrum=res.spectrum)
    assert 'id="blocks"' not in html and 'href="#blocks"' not in html
    assert "blocks" not in embedded(html)
    assert [k for k, _ in SECTIONS] == ["spectrum", "surfaces", "sharpness", "stability", "scaling", "provenance"]
    assert build_report(spectrum=res.spectrum, blocks=None) == html


def test_write_report_keeps_the_blocks_in_its_json(results, tmp_path):
    problem, res = results
    write_report(tmp_path, res, collect_provenance(problem), title="blocks")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["blocks"]["names"] == list(res.blocks.names)
    assert 'id="blocks"' in (tmp_path / "report.html").read_text()


def test_a_second_analyse_reads_the_block_spectra_from_the_cache(tmp_path):
    problem, _ = tiny_problem(seed=2)
    first = small_analyses(problem, cache=tmp_path / "landscape.h5", blocks={"k": 1, "num_probes": 2, "num_steps": 6})
    second = small_analyses(problem, cache=tmp_path / "landscape.h5", blocks={"k": 1, "num_probes": 2, "num_steps": 6})
    assert first.cache["from_cache"]["block_spectra"] is False and second.cache["from_cache"]["block_spectra"] is True
    assert second.blocks.summary() == first.blocks.summary()
    assert small_analyses(problem, blocks=None).blocks is None
