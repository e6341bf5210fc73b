"""Tests for landscape.checkpoint: layouts, wrapper prefixes, strict key checks, TorchScript, weights_only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.checkpoint import (
    CheckpointError,
    extract_state_dict,
    is_torchscript,
    load_checkpoint,
    load_model,
)
from landscape.models import mlp


class _Config:
    """A custom class: pickling an instance makes a checkpoint that weights_only=True refuses."""

    def __init__(self, lr: float):
        self.lr = lr


def _net(seed: int = 0, hidden: tuple[int, ...] = (6,)) -> nn.Sequential:
    return mlp(8, hidden, 3, seed=seed)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for k in state:
        assert torch.equal(current[k], state[k]), k


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}},
        lambda sd: {"model_state_dict": sd, "step": 100},
        lambda sd: {"net": sd, "acc": 0.9},
        lambda sd: {"model": {"state_dict": sd}, "epoch": 1},
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "net", "nested"],
)
def test_every_layout_loads_the_weights(tmp_path, wrap):
    source, target = _net(seed=1), _net(seed=0)
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(source.state_dict()), path)
    out = load_checkpoint(target, path)
    assert out is target
    _assert_same(target, source.state_dict())


def test_layout_from_an_already_loaded_object():
    source, target = _net(seed=1), _net(seed=0)
    load_checkpoint(target, {"state_dict": source.state_dict()})
    _assert_same(target, source.state_dict())


def test_dataparallel_prefix_is_stripped(tmp_path):
    source, target = _net(seed=1), _net(seed=0)
    wrapped_state = nn.DataParallel(source).state_dict()
    assert all(k.startswith("module.") for k in wrapped_state)
    torch.save({"state_dict": wrapped_state}, tmp_path / "ddp.pt")
    load_checkpoint(target, tmp_path / "ddp.pt")
    _assert_same(target, source.state_dict())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(prefix):
    sd = _net(seed=1).state_dict()
    extracted = extract_state_dict({prefix + k: v for k, v in sd.items()})
    assert list(extracted) == list(sd)


def test_prefix_kept_when_only_some_keys_have_it():
    sd = {"module.weight": torch.zeros(2), "bias": torch.zeros(2)}
    assert set(extract_state_dict(sd)) == {"module.weight", "bias"}


def test_wrapped_target_model_receives_prefixed_keys():
    source = nn.DataParallel(_net(seed=1))
    target = nn.DataParallel(_net(seed=0))
    load_checkpoint(target, source.state_dict())
    _assert_same(target, source.state_dict())


def test_no_state_dict_lists_top_level_keys():
    with pytest.raises(CheckpointError) as info:
        extract_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}, "weights": [1, 2]})
    msg = str(info.value)
    for key in ("'epoch'", "'optimizer'", "'weights'"):
        assert key in msg
    assert "state_dict" in msg


def test_non_mapping_checkpoint_names_its_type():
    with pytest.raises(CheckpointError, match="list"):
        extract_state_dict([1, 2, 3])


def test_wrong_keys_error_lists_missing_and_unexpected():
    target = _net(seed=0)
    bad = {f"fc.{k}": v for k, v in _net(seed=1).state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, bad)
    msg = str(info.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "0.weight" in msg and "fc.0.weight" in msg
    assert "4:" in msg  # four keys on each side
    assert "strict=False" in msg and "--model" in msg


def test_long_key_lists_are_truncated_with_counts():
    target = _net(seed=0)
    sd = dict(target.state_dict())
    sd.update({f"extra.{i}": torch.zeros(1) for i in range(25)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, sd)
    msg = str(info.value)
    assert "unexpected keys" in msg and "25:" in msg
    assert "extra.0" in msg and "extra.24" not in msg and "..." in msg
    assert "missing keys" not in msg


def test_strict_false_loads_matching_keys():
    source, target = _net(seed=1), _net(seed=0)
    sd = dict(source.state_dict())
    del sd["2.bias"]
    sd["head.weight"] = torch.zeros(1)
    before = target.state_dict()["2.bias"].clone()
    load_checkpoint(target, sd, strict=False)
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])
    assert torch.equal(target.state_dict()["2.bias"], before)


def test_shape_mismatch_is_reported_even_when_not_strict():
    target = _net(seed=0, hidden=(6,))
    other = _net(seed=1, hidden=(7,))
    for strict in (True, False):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(target, other.state_dict(), strict=strict)
        msg = str(info.value)
        assert "shape mismatches" in msg
        assert "0.weight: checkpoint (7, 8) vs model (6, 8)" in msg


@pytest.mark.parametrize("kind", ["shape", "keys"])
def test_model_unchanged_on_failure(kind):
    target = _net(seed=0)
    before = _snapshot(target)
    sd = dict(_net(seed=1).state_dict())
    if kind == "shape":
        sd["2.bias"] = torch.zeros(5)  # every other tensor fits and would be copied first
    else:
        sd["unexpected.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError):
        load_checkpoint(target, sd)
    _assert_same(target, before)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_round_trip(tmp_path):
    model = _net(seed=1).eval()
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(model), path)
    assert is_torchscript(path)
    loaded = load_model(path)
    assert isinstance(loaded, torch.jit.ScriptModule)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_weights_load_into_given_model(tmp_path):
    source = _net(seed=1)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(source), path)
    target = _net(seed=0)
    assert load_model(path, model=target) is target
    _assert_same(target, source.state_dict())
    other = load_checkpoint(_net(seed=2), path)
    _assert_same(other, source.state_dict())


def test_load_model_from_state_dict_file(tmp_path):
    source = _net(seed=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": source.state_dict()}, path)
    assert not is_torchscript(path)
    target = load_model(path, model=_net(seed=0))
    _assert_same(target, source.state_dict())


def test_load_model_without_model_asks_for_one(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(_net().state_dict(), path)
    with pytest.raises(CheckpointError, match="model="):
        load_model(path)


def test_weights_only_refuses_custom_objects_and_says_how_to_opt_out(tmp_path):
    source = _net(seed=1)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": source.state_dict(), "config": _Config(0.1)}, path)
    target = _net(seed=0)
    before = _snapshot(target)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    assert "weights_only=False" in str(info.value)
    _assert_same(target, before)
    load_checkpoint(target, path, weights_only=False)
    _assert_same(target, source.state_dict())


def test_pickled_whole_module_needs_explicit_opt_out(tmp_path):
    source = _net(seed=1)
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_model(path)
    loaded = load_model(path, weights_only=False)
    _assert_same(loaded, source.state_dict())


def test_legacy_serialization_format_loads(tmp_path):
    source = _net(seed=1)
    path = tmp_path / "legacy.pt"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    target = load_checkpoint(_net(seed=0), path)
    _assert_same(target, source.state_dict())


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt", model=_net())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(_net(), tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"hello world, not a checkpoint", b"PK\x03\x04broken zip", b""])
def test_non_checkpoint_file_is_reported(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(path, model=_net())
