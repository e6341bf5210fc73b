"""``landscape.sharding`` in one process: a rank's share of a random draw, with a stand-in for the process group.

The distributed behaviour (2 and 3 gloo ranks against one process) is in ``tests/distributed/test_sharded.py``;
here the chunked draw is checked with chunks far smaller than the vector, which the tiny models there never need.
"""

from __future__ import annotations

import pytest
import torch

from landscape import sharding
from landscape.linalg.probes import sample_probes
from landscape.sharding import Segment, ShardedSpace

N = 10_000
# Two "ranks" whose segments partition [0, N): uneven, several per rank, crossing chunk boundaries.
RANK_SEGMENTS = [
    (Segment(0, 300), Segment(2_990, 1_234), Segment(7_000, 3_000)),
    (Segment(300, 2_690), Segment(4_224, 2_776)),
]


class _Group:
    """What ShardedSpace needs of a process group, for one process standing for all ranks (sums are local)."""

    world_size = 2

    def all_gather_object(self, obj, what):
        return [sum(s.length for s in segs) for segs in RANK_SEGMENTS]

    def all_reduce_(self, tensor, what):
        return tensor


def _spaces() -> list[ShardedSpace]:
    return [ShardedSpace(_Group(), segs, N) for segs in RANK_SEGMENTS]


def _whole(parts: list[torch.Tensor]) -> torch.Tensor:
    full = torch.zeros(N, parts[0].shape[1], dtype=torch.float64)
    for segs, part in zip(RANK_SEGMENTS, parts, strict=True):
        offset = 0
        for s in segs:
            full[s.start : s.start + s.length] = part[offset : offset + s.length]
            offset += s.length
    return full


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(sharding, "DRAW_CHUNK", 1_000)


def test_rademacher_shares_are_the_rows_of_one_process_draw():
    want = sample_probes(N, 3, distribution="rademacher", seed=torch.Generator().manual_seed(5))
    parts = [
        sp.draw(3, "rademacher", torch.Generator().manual_seed(5), dtype=torch.float64, device="cpu")
        for sp in _spaces()
    ]
    assert [p.shape for p in parts] == [(4_534, 3), (5_466, 3)]
    assert torch.equal(_whole(parts), want)


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_gaussian_shares_form_one_vector_normalised_globally(distribution):
    parts = [
        sp.draw(2, distribution, torch.Generator().manual_seed(1), dtype=torch.float64, device="cpu", normalize=True)
        for sp in _spaces()
    ]
    whole = _whole(parts)
    torch.testing.assert_close(whole.norm(dim=0), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=0)
    # every rank drew the same stream: the ranks' pieces are pieces of one vector, not independent ones
    again = _spaces()[0].draw(
        2, distribution, torch.Generator().manual_seed(1), dtype=torch.float64, device="cpu", normalize=True
    )
    assert torch.equal(again, parts[0])
    assert abs(float(whole[:, 0] @ whole[:, 1])) < 0.1  # two independent directions of 10^4 entries


def test_the_shares_must_add_up_to_the_vector():
    class Short(_Group):
        def all_gather_object(self, obj, what):
            return [100, 200]

    with pytest.raises(ValueError, match="every rank must select the same parameters"):
        ShardedSpace(Short(), RANK_SEGMENTS[0], N)


def test_an_unsharded_problem_does_not_import_the_dtensor_module():
    """Asking whether a parameter is a DTensor must not import ``torch.distributed.tensor`` (~40 MB of RSS in every
    process that builds a Problem); a model that has DTensors has imported it already."""
    import subprocess
    import sys

    code = (
        "import sys, torch, landscape\n"
        "p = landscape.Problem(torch.nn.Linear(3, 2), torch.nn.MSELoss(), [(torch.randn(4, 3), torch.randn(4, 2))])\n"
        "p.loss(); landscape.hessian(p) @ torch.randn(8)\n"
        "assert 'torch.distributed.tensor' not in sys.modules\n"
        "import torch.distributed.tensor as dt\n"
        "assert not landscape.sharding.is_dtensor(torch.zeros(1))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
