"""Data-parallel analyses on 2 and 3 CPU ranks (gloo) equal the single-process ones; failures end the run cleanly.

Every rank holds an uneven shard of a tiny float64 problem (``_case.SHARDS``). Products, losses and gradients are
sums over ranks of partial sums, so they match the single-process values to rounding (1e-10 relative here, in
practice ~1e-15), not bit for bit: the single process adds the batches of the whole data set in order, the ranks add
their own batches and then the ranks' totals. Across ranks, results are bit-identical (all-reduce hands every rank
the same sum).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import distributed
from landscape.cache import Cache
from landscape.data import data_fingerprint
from landscape.problem import Problem
from tests.distributed import _case
from tests.distributed.launch import launch

RTOL = 1e-10

pytestmark = pytest.mark.slow  # every test starts 1 to 3 Python processes


def _parts(x) -> list[np.ndarray]:
    """A result as a list of arrays (a ``(loss, grad)`` pair gives two)."""
    if isinstance(x, tuple):
        return [a for v in x for a in _parts(v)]
    return [x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)]


def rank_results(world: int, scenario: str, out: Path, **launch_options) -> list[dict]:
    """What each of ``world`` ranks of ``scenario`` saved (``out/rank{r}.pt``); every rank must exit 0."""
    run = launch(world, scenario, out, **launch_options)
    assert run.returncodes == (0,) * world, "\n".join(run.outputs)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


#: A module-scoped fixture run once for 2 and once for 3 ranks (``request.param`` is the world size).
over_worlds = pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])


def world_results(request, tmp_path_factory, scenario: str, **launch_options) -> tuple[int, list[dict]]:
    """The world size of an :data:`over_worlds` fixture and what each of its ranks of ``scenario`` saved."""
    world = request.param
    return world, rank_results(world, scenario, tmp_path_factory.mktemp(f"{scenario}{world}"), **launch_options)


@pytest.fixture(scope="module")
def reference() -> dict:
    return _case.analyses(_case.problem(_case.data()))


@over_worlds
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    return world_results(request, tmp_path_factory, "analyses")


COMPARED = [
    "loss",
    "loss_and_grad",
    "hvp",
    "hvp_block",
    "ggn_block",
    "fisher_block",
    "top_eigen",
    "power",
    "trace_hutchpp",
    "trace_hutchinson",
    "density_nodes",
    "density_weights",
    "spectrum_eigenvalues",
    "spectrum_trace",
    "surface_loss",
    "surface_accuracy",
]


@pytest.mark.parametrize("name", COMPARED)
def test_uneven_shards_give_single_process_result(ranks, reference, name):
    _, results = ranks
    for w, g in zip(_parts(reference[name]), _parts(results[0][name]), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * np.max(np.abs(w)))


def test_every_rank_returns_the_same_bits(ranks):
    _, results = ranks
    for other in results[1:]:
        for name in COMPARED:
            for x, y in zip(_parts(results[0][name]), _parts(other[name]), strict=True):
                assert np.array_equal(x, y, equal_nan=True), name


def test_describe_records_ranks_and_global_sample_count(ranks):
    world, results = ranks
    for rank, res in enumerate(results):
        info = res["describe"]["distributed"]
        sizes = _case.SHARDS[world]
        batches = [-(-n // _case.BATCH_SIZE) for n in sizes]
        want = {"rank": rank, "world_size": world, "backend": "gloo", "shard_sizes": sizes, "batch_counts": batches}
        assert info == want
        assert res["describe"]["num_samples"] == res["num_samples"] == _case.NUM_SAMPLES


def test_products_cost_one_all_reduce_of_n_values_each(ranks):
    _, results = ranks
    for res in results:
        assert res["bytes_all_reduced"] > 0
        assert res["bytes_all_reduced"] % 8 == 0  # float64 payloads (surface correct counts are int64)


def test_fingerprints_describe_the_set_of_examples_and_the_batches_in_rank_order(ranks):
    world, results = ranks
    digests = [distributed.shard_digest([_case.shard(r, w)]) for w in (1, 2, 3) for r in range(w)]
    whole = distributed.combine_digests(digests[:1])
    assert distributed.combine_digests(digests[1:3]) == whole == distributed.combine_digests(digests[3:])
    assert all(res["fingerprint"] == whole for res in results)
    assert _case.problem(_case.data()).sample_fingerprint() == whole
    batches = data_fingerprint(_case.batches_in_rank_order(world))
    assert all(res["batch_fingerprint"] == batches for res in results)
    assert batches != data_fingerprint(_case.batches_in_rank_order(5 - world))
    # Different data, different fingerprint.
    X, y = _case.data()
    y = y.clone()
    y[0] = (y[0] + 1) % 3
    assert distributed.combine_digests([distributed.shard_digest([(X, y)])]) != whole


def _surface_reference() -> np.ndarray:
    from landscape.surface import directions, surface

    p = _case.problem(_case.data())
    return surface(p, directions.filter_normalized(p, num=2, seed=0), span=(-1.0, 1.0), resolution=7, chunk=4).loss


def test_surface_resumes_with_another_number_of_ranks_after_a_rank_is_killed(tmp_path):
    cache = tmp_path / "landscape.h5"
    # Rank 1 of 2 holds 2 batches: its 35th loss evaluation is in the 5th chunk of 4 points.
    killed = launch(2, "surface", tmp_path, str(cache), "1", "35")
    assert killed.returncodes[1] == -9
    assert killed.returncodes[0] not in (0, None), killed.outputs[0]
    assert "DistributedError" in killed.outputs[0] and "rank 0 of 2" in killed.outputs[0], killed.outputs[0]
    assert killed.wall_time < 30
    with Cache(cache, readonly=True) as store:
        (key,) = store.keys()
        done = store.get(key).arrays["done"]
    assert 0 < done.sum() < done.size  # finished chunks kept, the rest to do
    resumed = launch(3, "surface", tmp_path, str(cache), "-1", "0")
    assert resumed.returncodes == (0, 0, 0), "\n".join(resumed.outputs)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(3)]
    assert results[0]["settings"]["cache"]["points_from_cache"] == int(done.sum())
    want = _surface_reference()
    for res in results:
        np.testing.assert_allclose(res["loss"], want, rtol=1e-12)
    with Cache(cache, readonly=True) as store:
        entry = store.get(key)
        assert entry.arrays["done"].all()
        np.testing.assert_array_equal(entry.arrays["loss"], results[0]["loss"])


def test_a_rank_that_raises_ends_the_run_with_a_clear_error(tmp_path):
    run = launch(2, "raise", tmp_path, dist_timeout=20.0)
    assert "injected failure on this rank" in run.outputs[1]
    assert run.returncodes[1] != 0
    assert run.returncodes[0] != 0
    assert "DistributedError" in run.outputs[0] and "rank 0 of 2" in run.outputs[0], run.outputs[0]
    assert run.wall_time < 30


def test_a_rank_that_stops_answering_ends_the_run_after_the_timeout(tmp_path):
    run = launch(2, "hang", tmp_path, timeout=25.0, dist_timeout=4.0, grace=1.0)
    assert run.returncodes[0] not in (0, None)
    assert "DistributedError" in run.outputs[0], run.outputs[0]
    assert run.ended[0] < 20


def test_cached_spectrum_is_read_back_on_every_rank(ranks):
    world, results = ranks
    for res in results:
        first, second, _, second_time = res["cached_spectrum"]
        np.testing.assert_array_equal(first, second)
        assert second_time == results[0]["cached_spectrum"][3]  # rank 0's stored result, broadcast


def test_command_line_under_torchrun_equals_one_process(tmp_path):
    import json

    args = ["eigen", "--top-k", "2", "--dtype", "float64", "--data", "synthetic", "--quiet", "--json"]
    run = launch(2, "cli", tmp_path, *args, "--out", str(tmp_path / "ranks"))
    assert run.returncodes == (0, 0), "\n".join(run.outputs)
    assert '"eigenvalues"' in run.outputs[0] and '"eigenvalues"' not in run.outputs[1]  # only rank 0 prints
    assert {p.name for p in (tmp_path / "ranks").iterdir()} <= {"eigen.json", "landscape.h5", "landscape.h5.lock"}
    assert (tmp_path / "ranks" / "eigen.json").exists()
    # One process, with the ranks' thread count: the built-in model is trained in float32, whose bits depend on it.
    single = launch(1, "cli", tmp_path, *args, "--out", str(tmp_path / "single"))
    assert single.returncodes == (0,), single.outputs[0]
    got = json.loads((tmp_path / "ranks" / "eigen.json").read_text())["eigenvalues"]
    want = json.loads((tmp_path / "single" / "eigen.json").read_text())["eigenvalues"]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _surface_reference_with_accuracy():
    from landscape.surface import directions, surface

    p = _case.problem(_case.data())
    return surface(p, directions.filter_normalized(p, num=2, seed=0), span=(-1.0, 1.0), resolution=7, chunk=4)


@pytest.mark.parametrize("world_size", [2, 3])
def test_replicated_data_split_grid_points_bit_identical_to_one_process(tmp_path, world_size):
    cache = tmp_path / "landscape.h5"
    run = launch(world_size, "replicated", tmp_path, str(cache), "-1", "0")
    assert run.returncodes == (0,) * world_size, "\n".join(run.outputs)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    want = _surface_reference_with_accuracy()
    batches = len(list(_case.problem(_case.data()).batches()))
    for res in results:  # every point evaluated whole on one rank: the same bits as one process, on every rank
        np.testing.assert_array_equal(res["loss"], want.loss)
        np.testing.assert_array_equal(res["accuracy"], want.accuracy)
    # The work is dealt out: each rank evaluated about 1/world_size of the 49 points (the plan's timing aside).
    calls = [res["calls"] for res in results]
    assert sum(calls) >= 49 * batches
    assert max(calls) <= (49 // world_size + 8) * batches + 64, calls
    with Cache(cache, readonly=True) as store:
        (key,) = store.keys()
        np.testing.assert_array_equal(store.get(key).arrays["loss"], want.loss)


def test_replicated_surface_resumes_bit_identical_after_a_rank_is_killed(tmp_path):
    cache = tmp_path / "landscape.h5"
    killed = launch(2, "replicated", tmp_path, str(cache), "1", "60")
    assert killed.returncodes[1] == -9 and killed.returncodes[0] not in (0, None), killed.outputs[0]
    with Cache(cache, readonly=True) as store:
        (key,) = store.keys()
        done = store.get(key).arrays["done"]
    assert 0 < done.sum() < done.size
    resumed = launch(3, "replicated", tmp_path, str(cache), "-1", "0")
    assert resumed.returncodes == (0, 0, 0), "\n".join(resumed.outputs)
    res = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert res["settings"]["cache"]["points_from_cache"] == int(done.sum())
    np.testing.assert_array_equal(res["loss"], _surface_reference_with_accuracy().loss)


def test_command_line_surface_with_replicated_data_equals_one_process_bit_for_bit(tmp_path):
    import json

    args = ["surface", "--resolution", "5", "--dtype", "float64", "--data", "synthetic", "--quiet", "--json"]
    run = launch(2, "cli", tmp_path, *args, "--replicated-data", "--no-cache", "--out", str(tmp_path / "ranks"))
    assert run.returncodes == (0, 0), "\n".join(run.outputs)
    single = launch(1, "cli", tmp_path, *args, "--no-cache", "--out", str(tmp_path / "single"))
    assert single.returncodes == (0,), single.outputs[0]
    got = json.loads((tmp_path / "ranks" / "surface.json").read_text())
    want = json.loads((tmp_path / "single" / "surface.json").read_text())
    assert got["loss"] == want["loss"]


def test_command_line_cache_hit_with_replicated_data_is_followed_by_every_rank(tmp_path):
    import json

    # Rank 0 alone holds the cache: on a hit the other ranks must skip the work too, or their interpolation's
    # collectives would wait for rank 0 until the timeout.
    args = ["interpolate", "--from-init", "--resolution", "5", "--dtype", "float64", "--data", "synthetic"]
    args += ["--quiet", "--json", "--replicated-data", "--out", str(tmp_path / "out")]
    first = launch(2, "cli", tmp_path, *args)
    assert first.returncodes == (0, 0), "\n".join(first.outputs)
    again = launch(2, "cli", tmp_path, *args)
    assert again.returncodes == (0, 0), "\n".join(again.outputs)
    assert json.loads((tmp_path / "out" / "interpolate.json").read_text())["from_cache"] is True


@pytest.fixture(scope="module")
def minibatch_reference() -> dict:
    return _case.minibatch_analyses(_case.problem(_case.data()))


@over_worlds
def minibatch_ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    return world_results(request, tmp_path_factory, "minibatch", timeout=180.0)


def test_minibatch_analyses_draw_the_examples_one_process_draws(minibatch_ranks, minibatch_reference):
    """Minibatches, m-sharpness subsets and per-example Hessians are drawn by global example index (the shards in
    rank order): gathered whole onto every rank, they give one process's results bit for bit; where full-data
    products enter too (the noise scale, the whole-data batch, spectrum subsets, Lanczos in the matrix-free
    stability statistics) to rounding. With 3 ranks, rank 1 holds no batch of the second spectrum subset."""
    world, results = minibatch_ranks
    # spectrum(subsets=) splits by whole batches: compare with one process holding the same batches.
    one = Problem(_case.model(), torch.nn.CrossEntropyLoss(), _case.batches_in_rank_order(world))
    reference = {**minibatch_reference, "spectrum_subsets": _case.subset_spectrum(one)}
    for name, want in reference.items():
        for w, g in zip(_parts(want), _parts(results[0][name]), strict=True):
            if name in _case.GATHERED:
                assert np.array_equal(g, w), name
            else:
                scale = np.max(np.abs(w[np.isfinite(w)]))
                np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * scale, err_msg=name)
    for other in results[1:]:
        for name in reference:
            for x, y in zip(_parts(results[0][name]), _parts(other[name]), strict=True):
                assert np.array_equal(x, y, equal_nan=True), name


def test_cache_keys_follow_what_a_result_depends_on(ranks):
    """Full-data results in eval mode are keyed by the set of examples: shared with one process (any batching) and
    any number of ranks. The rest are keyed by the batches in order: shared with one process holding the ranks'
    batches in rank order, not with another sharding."""
    from landscape.cache import key_for

    world, results = ranks
    by_set, by_batches = results[0]["keys"][True], results[0]["keys"][False]
    assert all(res["keys"] == results[0]["keys"] for res in results)
    whole = _case.problem(_case.data())
    assert key_for(whole, "spectrum", {"k": 2}, order_free=True) == by_set
    assert key_for(whole, "spectrum", {"k": 2}, order_free=False) != by_batches
    same = Problem(_case.model(), torch.nn.CrossEntropyLoss(), _case.batches_in_rank_order(world))
    assert key_for(same, "spectrum", {"k": 2}, order_free=False) == by_batches
    other = Problem(_case.model(), torch.nn.CrossEntropyLoss(), _case.batches_in_rank_order(5 - world))
    assert key_for(other, "spectrum", {"k": 2}, order_free=False) != by_batches


def test_one_process_reads_the_spectrum_a_data_parallel_run_cached(ranks):
    from landscape.spectrum import spectrum

    _, results = ranks
    eigenvalues, _, wall_time, _ = results[0]["cached_spectrum"]
    p = _case.problem(_case.data())
    hit = spectrum(p, k=2, num_probes=2, num_steps=6, seed=0, cache=results[0]["cache_path"])
    assert hit.wall_time == wall_time  # the stored result, not a recomputation
    assert np.array_equal(hit.eigenvalues, eigenvalues)


def test_language_model_on_token_batches_equals_one_process(tmp_path):
    """Dict batches sharded over 2 ranks: the token-weighted loss (batch weights over the global token count), its
    gradient, Hessian and GGN products, the top eigenvalue and examples drawn by global index (shards of different
    lengths, padded) equal one process holding all the batches."""
    pytest.importorskip("transformers")
    run = launch(2, "language_model", tmp_path, timeout=180.0)
    assert run.returncodes == (0, 0), "\n".join(run.outputs)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    want = _case.lm_analyses(_case.lm_problem(_case.lm_batches()))
    for name, w in want.items():
        for a, b in zip(_parts(w), _parts(results[0][name]), strict=True):
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * np.max(np.abs(a)), err_msg=name)
        for a, b in zip(_parts(results[0][name]), _parts(results[1][name]), strict=True):
            assert np.array_equal(a, b), name
