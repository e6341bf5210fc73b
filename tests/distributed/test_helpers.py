"""The parts of :mod:`landscape.distributed` that need no process group: sharding, fingerprints, argument checks."""

from __future__ import annotations

import pytest
import torch

from landscape import distributed
from tests.distributed import _case


def test_shard_splits_into_contiguous_nearly_equal_blocks():
    X = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    parts = [distributed.shard((X, y), r, 3) for r in range(3)]
    assert [len(p[1]) for p in parts] == [4, 3, 3]
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="at least one"):
        distributed.shard((X[:2], y[:2]), 0, 3)


def test_distributed_true_without_a_process_group_is_a_clear_error():
    with pytest.raises(distributed.DistributedError, match="not initialised"):
        _case.problem(_case.data(), distributed=True)
    with pytest.raises(ValueError, match="distributed must be"):
        _case.problem(_case.data(), distributed="yes")
    assert _case.problem(_case.data()).dist is None


def test_fingerprint_does_not_depend_on_sharding_batching_or_order():
    X, y = _case.data()
    whole = distributed.combine_digests([distributed.shard_digest([(X, y)])])
    shards = [distributed.shard((X, y), r, 3) for r in range(3)]
    batched = [distributed.shard_digest(list(zip(x.split(5), t.split(5), strict=True))) for x, t in shards]
    assert distributed.combine_digests(reversed(batched)) == whole
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 3
    assert distributed.combine_digests([distributed.shard_digest([(X, y2)])]) != whole
    assert distributed.combine_digests([distributed.shard_digest([(X.float(), y)])]) != whole
