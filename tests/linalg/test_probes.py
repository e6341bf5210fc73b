"""Probe vectors: distributions, seeding, blocking independence, and no use of the global RNG."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.linalg import make_generator, sample_probes
from tests.linalg.helpers import assert_same_rng_state, global_rng_state


def test_rademacher_entries_are_plus_minus_one():
    Z = sample_probes(500, 7, distribution="rademacher", seed=3)
    assert Z.shape == (500, 7) and Z.dtype == torch.float64
    assert set(torch.unique(Z).tolist()) == {-1.0, 1.0}


def test_sphere_probes_have_norm_sqrt_n_and_normalize_gives_unit_columns():
    Z = sample_probes(400, 5, distribution="sphere", seed=1)
    torch.testing.assert_close(Z.norm(dim=0), torch.full((5,), math.sqrt(400.0), dtype=torch.float64))
    for dist in ("rademacher", "gaussian", "sphere"):
        U = sample_probes(400, 5, distribution=dist, seed=1, normalize=True)
        torch.testing.assert_close(U.norm(dim=0), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "sphere"])
def test_probes_are_isotropic(distribution):
    # E[z z^T] = I: the sample second moment of 4000 probes in dimension 6 is within ~6 standard errors (~0.1) of I.
    Z = sample_probes(6, 4000, distribution=distribution, seed=0)
    second = Z @ Z.T / 4000
    assert torch.max(torch.abs(second - torch.eye(6, dtype=torch.float64))) < 0.1


def test_same_seed_is_bit_identical_and_different_seed_differs():
    a = sample_probes(100, 4, distribution="gaussian", seed=11)
    b = sample_probes(100, 4, distribution="gaussian", seed=11)
    c = sample_probes(100, 4, distribution="gaussian", seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_probe_j_does_not_depend_on_blocking():
    whole = sample_probes(50, 30, distribution="rademacher", seed=5)
    gen = make_generator(5)
    parts = torch.cat([sample_probes(50, k, distribution="rademacher", seed=gen) for k in (10, 20)], dim=1)
    assert torch.equal(whole, parts)


def test_dtype_is_a_rounding_of_the_float64_draw():
    z64 = sample_probes(64, 3, distribution="gaussian", seed=2)
    z32 = sample_probes(64, 3, distribution="gaussian", seed=2, dtype=torch.float32)
    assert z32.dtype == torch.float32 and z32.T.is_contiguous()  # each probe contiguous
    assert torch.equal(z32, z64.float())


def test_global_rng_untouched():
    before = global_rng_state()
    for dist in ("rademacher", "gaussian", "sphere"):
        sample_probes(20, 3, distribution=dist, seed=0)
    assert_same_rng_state(before)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="distribution"):
        sample_probes(10, 2, distribution="uniform")
    with pytest.raises(TypeError, match="seed"):
        sample_probes(10, 2, seed=1.5)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rademacher_chunks_continue_one_draw(normalize, dtype, monkeypatch):
    """Drawn a column and a chunk at a time, the probes are those of one ``(k, n)`` draw of the stream, rounded:
    chunks that split a column, and columns that start mid-chunk, change nothing."""
    from landscape.linalg import probes

    monkeypatch.setattr(probes, "RADEMACHER_CHUNK", 7)
    n, k = 50, 3
    rows = torch.randint(0, 2, (k, n), generator=torch.Generator().manual_seed(4)).double().mul_(2).sub_(1)
    if normalize:
        rows = rows / rows.norm(dim=1, keepdim=True)
    Z = sample_probes(n, k, seed=4, dtype=dtype, normalize=normalize)
    assert Z.T.is_contiguous() and Z.dtype == dtype  # each probe contiguous
    assert torch.equal(Z, rows.T.to(dtype))


def test_a_rademacher_block_holds_itself_and_one_chunk():
    """The draw holds the block and one chunk (drawn in the probes' dtype), not ``k`` vectors of int64 and of
    float64 besides the block: on GPT-2 small a block of 5 probes held 10 GB more than its 2.5 GB."""
    from landscape.linalg import probes
    from tests.linalg.test_thick_restart import _LiveBytes

    n, k = 3 * probes.RADEMACHER_CHUNK + 5, 4
    with _LiveBytes() as alloc:
        Z = sample_probes(n, k, seed=0, dtype=torch.float32)
    block, chunk = Z.numel() * 4, probes.RADEMACHER_CHUNK * 4
    assert alloc.peak <= block + chunk, (alloc.peak - block) / chunk
