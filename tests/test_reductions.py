"""Norms of long float32 vectors summed in float64 (torch's CPU float32 norm is 1.5% low at 1.24e8 entries)."""

from __future__ import annotations

import math

import torch

from landscape import reductions
from landscape.sharding import VectorSpace


def _long(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-2


def test_norm_of_four_million_float32_entries_is_float64_accurate():
    """Float64 summation of ``n = 2^22`` squares errs by at most ``n eps64`` relative (9e-10): the bound holds with
    room, where torch's float32 kernel errs by ~5e-5 here."""
    v = _long(1 << 22)
    exact = math.sqrt(float(v.double().square().sum()))
    bound = v.numel() * torch.finfo(torch.float64).eps
    assert abs(reductions.norm(v) - exact) <= bound * exact
    assert abs(VectorSpace().norm(v) - exact) <= bound * exact


def test_norms_over_either_dimension_and_in_the_input_dtype():
    V = _long(1 << 22).reshape(-1, 4)
    exact = V.double().square().sum(dim=0).sqrt()
    got = reductions.norms(V, 0)
    assert got.dtype == torch.float32 and got.shape == (4,)
    # The only error left is the float32 rounding of the result.
    torch.testing.assert_close(got.double(), exact, rtol=torch.finfo(torch.float32).eps, atol=0.0)
    rows = reductions.norms(V.T.contiguous(), 1, keepdim=True)
    assert rows.shape == (4, 1)
    torch.testing.assert_close(rows[:, 0].double(), exact, rtol=torch.finfo(torch.float32).eps, atol=0.0)
    torch.testing.assert_close(VectorSpace().norms(V, 0), got, rtol=0.0, atol=0.0)


def test_float64_input_is_left_untouched_and_empty_input_is_zero():
    v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert reductions.norm(v) == 5.0 and v.tolist() == [3.0, 4.0]
    assert reductions.norm(torch.zeros(0)) == 0.0
    assert reductions.norms(torch.zeros(0, 3), 0).tolist() == [0.0, 0.0, 0.0]


def _rademacher_past_two_to_the_24() -> tuple[int, torch.Tensor]:
    """Rows ``n = 2^24 + 2^23`` and an ``(n, 2)`` block: a column of ones and one of alternating signs."""
    n = (1 << 24) + (1 << 23)
    Z = torch.ones(n, 2)
    Z[::2, 1] = -1.0
    return n, Z


def test_a_rademacher_block_past_two_to_the_24_rows():
    """torch's float32 column norm of a +-1 block saturates at 4096 = sqrt(2^24) (GPT-2 small's SLQ probes:
    start vectors 2.7x too long, a trace 40x too large with the wrong sign); summed in float64 it is exact."""
    n, Z = _rademacher_past_two_to_the_24()
    exact = float(torch.tensor(math.sqrt(n), dtype=torch.float32))  # the float32 result, correctly rounded
    assert reductions.norms(Z, 0).tolist() == [exact] * 2


def test_lanczos_from_a_block_past_two_to_the_24_rows_is_exact_for_the_identity():
    """The start block is normalised by its true norms, and ``alpha_1 = q^T I q = 1``. Stop 31's code divided this
    +-1 block by the saturated 4096 (columns 1.22x too long; on GPT-2 small's probes 2.7x, which made the
    Gram-Schmidt coefficients, hence the trace, -40x their value). The tolerance on ``alpha_1`` is float32
    accumulation of ``q^T (I q)`` over 2.5e7 terms of one sign (1.4e-5 measured; mixed signs, as in a Hessian's,
    err far less)."""
    from landscape.linalg.lanczos import lanczos
    from tests.linalg.helpers import DiagonalOperator

    n, Z = _rademacher_past_two_to_the_24()
    res = lanczos(DiagonalOperator(torch.ones(n)), 2, v0=Z, keep_basis=False)
    assert abs(res.alphas[:, 0] - 1.0).max() <= 1e-4
    assert res.start_norms.tolist() == [float(torch.tensor(math.sqrt(n), dtype=torch.float32))] * 2
