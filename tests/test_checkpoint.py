"""Tests for landscape.checkpoint: layouts, wrapper prefixes, strict key checks, TorchScript, weights_only,
safetensors files, tied weights, and Hugging Face save_pretrained directories (load_hf)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from landscape.checkpoint import (
    CheckpointError,
    MissingDependencyError,
    extract_state_dict,
    is_safetensors,
    is_torchscript,
    load_checkpoint,
    load_hf,
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


# --- safetensors files --------------------------------------------------------------------------------------------


def test_safetensors_file_round_trip_through_load_model(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = _net(seed=1)
    path = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(source.state_dict(), path)
    assert is_safetensors(path) and not is_torchscript(path)
    target = load_model(path, model=_net(seed=0))
    _assert_same(target, source.state_dict())
    other = load_checkpoint(_net(seed=2), path)
    _assert_same(other, source.state_dict())


def test_safetensors_recognised_by_its_header_whatever_the_suffix(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = _net(seed=1)
    path = tmp_path / "weights.bin"
    safetensors_torch.save_file(source.state_dict(), path)
    torch.save(source.state_dict(), tmp_path / "ckpt.pt")
    assert is_safetensors(path)
    assert not is_safetensors(tmp_path / "ckpt.pt")
    assert not is_safetensors(tmp_path)
    _assert_same(load_checkpoint(_net(seed=0), path), source.state_dict())


def test_safetensors_keys_are_checked_like_pt(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    bad = {f"fc.{k}": v.contiguous() for k, v in _net(seed=1).state_dict().items()}
    path = tmp_path / "wrong.safetensors"
    safetensors_torch.save_file(bad, path)
    target = _net(seed=0)
    before = _snapshot(target)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    msg = str(info.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "fc.0.weight" in msg
    _assert_same(target, before)
    prefixed = {f"module.{k}": v for k, v in _net(seed=1).state_dict().items()}
    safetensors_torch.save_file(prefixed, tmp_path / "ddp.safetensors")
    _assert_same(load_checkpoint(target, tmp_path / "ddp.safetensors"), _net(seed=1).state_dict())


def test_safetensors_without_model_asks_for_one(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(_net().state_dict(), path)
    with pytest.raises(CheckpointError, match="model="):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"not safetensors at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken"])
def test_corrupt_safetensors_is_reported(tmp_path, content):
    pytest.importorskip("safetensors")
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_model(path, model=_net())


def test_missing_safetensors_package_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(MissingDependencyError, match="pip install safetensors") as info:
        load_checkpoint(_net(), path)
    assert isinstance(info.value, ImportError) and isinstance(info.value, CheckpointError)


def test_save_pretrained_directory_given_to_load_model_points_to_load_hf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="load_hf"):
        load_model(tmp_path, model=_net())


# --- tied weights -------------------------------------------------------------------------------------------------


class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight, like a language model with tied embeddings."""

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(5, 3, generator=generator))


def test_tied_weight_left_out_of_the_checkpoint_counts_as_present():
    source, target = _Tied(seed=1), _Tied(seed=0)
    state = {"embed.weight": source.embed.weight.detach().clone()}
    load_checkpoint(target, state)
    assert target.head.weight is target.embed.weight
    torch.testing.assert_close(target.head.weight, source.embed.weight, rtol=0, atol=0)
    # Either name alone will do, and a missing untied key is still reported.
    load_checkpoint(_Tied(seed=0), {"head.weight": source.embed.weight.detach().clone()})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(_Tied(seed=0), {})


def test_tied_names_holding_different_values_are_refused():
    target = _Tied(seed=0)
    before = _snapshot(target)
    state = {"embed.weight": torch.zeros(5, 3), "head.weight": torch.ones(5, 3)}
    with pytest.raises(CheckpointError, match="tie"):
        load_checkpoint(target, state)
    _assert_same(target, before)


# --- Hugging Face save_pretrained directories ---------------------------------------------------------------------


def _gpt2(**overrides):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0, **overrides
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return transformers.BertForMaskedLM(config).eval()


def _token_ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 64, (3, 11), generator=torch.Generator().manual_seed(seed))


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("build", [_gpt2, _bert], ids=["gpt2_lm_head", "bert_masked_lm"])
def test_load_hf_round_trip_is_bit_exact(tmp_path, build):
    model = build()
    model.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert type(loaded) is type(model)
    assert not loaded.training
    _assert_same_weights(loaded, model)
    ids = _token_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    info = loaded.landscape_load_info
    assert info.model_class == type(model).__name__
    assert info.weights == "model.safetensors"
    assert info.saved_dtype == info.dtype == torch.float32
    assert info.path == str(tmp_path)
    assert info.attn_implementation == loaded.config._attn_implementation


def test_load_hf_tied_weights_are_one_parameter(tmp_path):
    model = _gpt2()
    model.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    named = dict(loaded.named_parameters())
    assert "transformer.wte.weight" in named and "lm_head.weight" not in named
    unique = {id(p): p.numel() for p in loaded.parameters()}
    assert sum(p.numel() for p in named.values()) == sum(unique.values())
    assert len(named) == len(dict(model.named_parameters()))


def test_save_pretrained_safetensors_loads_into_a_fresh_model_with_the_key_check(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = _gpt2()
    model.save_pretrained(tmp_path)
    stored = safetensors_torch.load_file(tmp_path / "model.safetensors")
    # save_pretrained stores the tied tensor once.
    assert ("lm_head.weight" in stored) != ("transformer.wte.weight" in stored)
    fresh = _gpt2()
    load_model(tmp_path / "model.safetensors", model=fresh)
    _assert_same_weights(fresh, model)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight


def test_load_hf_casts_bf16_weights_to_float64_and_records_the_saved_dtype(tmp_path):
    model = _gpt2().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path, dtype=torch.float64)
    floating = [t for t in (*loaded.parameters(), *loaded.buffers()) if t.is_floating_point()]
    assert floating and all(t.dtype == torch.float64 for t in floating)
    for name, param in model.named_parameters():
        assert torch.equal(loaded.get_parameter(name), param.double()), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    info = loaded.landscape_load_info
    assert info.saved_dtype == torch.bfloat16 and info.dtype == torch.float64
    kept = load_hf(tmp_path)
    assert kept.landscape_load_info.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in kept.parameters())
    assert load_hf(tmp_path, dtype="float32").landscape_load_info.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, "double"])
def test_load_hf_dtype_must_be_float32_or_float64(tmp_path, dtype):
    with pytest.raises(ValueError, match=r"torch\.float32 or torch\.float64"):
        load_hf(tmp_path, dtype=dtype)


def test_load_hf_keeps_the_saved_attention_implementation(tmp_path):
    _gpt2().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["attn_implementation"] = "eager"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_hf(tmp_path)
    assert loaded.config._attn_implementation == "eager"
    assert loaded.landscape_load_info.attn_implementation == "eager"


def test_load_hf_without_architectures_gives_the_base_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    base = _gpt2().transformer
    base.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_hf(tmp_path)
    assert isinstance(loaded, transformers.GPT2Model)
    _assert_same_weights(loaded, base)


def _save_config_and_bin(model: nn.Module, path, state) -> None:
    """The layout of save_pretrained(safe_serialization=False), which transformers 5 no longer writes."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(path)
    torch.save(state, path / "pytorch_model.bin")


def test_load_hf_reads_a_pytorch_model_bin_of_plain_tensors(tmp_path):
    model = _gpt2()
    _save_config_and_bin(model, tmp_path, model.state_dict())
    loaded = load_hf(tmp_path)
    _assert_same_weights(loaded, model)
    assert loaded.landscape_load_info.weights == "pytorch_model.bin"


def test_load_hf_refuses_pickled_objects_in_pytorch_model_bin(tmp_path):
    model = _gpt2()
    _save_config_and_bin(model, tmp_path, {**model.state_dict(), "config": _Config(0.1)})
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_hf(tmp_path)


def test_load_hf_refuses_a_checkpoint_missing_weights(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _gpt2().save_pretrained(tmp_path)
    state = safetensors_torch.load_file(tmp_path / "model.safetensors")
    del state["transformer.h.0.mlp.c_fc.bias"]
    safetensors_torch.save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.mlp\.c_fc\.bias"):
        load_hf(tmp_path)


def test_load_hf_warns_about_unused_weights(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = _gpt2()
    model.save_pretrained(tmp_path)
    state = safetensors_torch.load_file(tmp_path / "model.safetensors")
    state["extra.weight"] = torch.zeros(2)
    safetensors_torch.save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="extra.weight"):
        loaded = load_hf(tmp_path)
    _assert_same_weights(loaded, model)


def _fake_directory(path, config: dict) -> None:
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


def test_load_hf_unknown_architecture_says_to_upgrade(tmp_path):
    pytest.importorskip("transformers")
    _fake_directory(tmp_path, {"architectures": ["NoSuchModelForCausalLM"], "model_type": "gpt2"})
    with pytest.raises(CheckpointError, match="upgrade transformers"):
        load_hf(tmp_path)


def test_load_hf_remote_code_needs_explicit_trust(tmp_path):
    pytest.importorskip("transformers")
    marker = tmp_path / "ran"
    _fake_directory(
        tmp_path,
        {
            "architectures": ["CustomForCausalLM"],
            "model_type": "custom",
            "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
        },
    )
    (tmp_path / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        load_hf(tmp_path)
    assert not marker.exists()


def test_load_hf_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="save_pretrained") as info:
        load_hf(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)
    assert "nope" in str(info.value)


def test_load_hf_file_instead_of_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file, not a directory") as info:
        load_hf(path)
    assert "load_model" in str(info.value)


def test_load_hf_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    expected = "not a save_pretrained directory: expected config.json and model.safetensors/pytorch_model.bin"
    with pytest.raises(CheckpointError, match=expected):
        load_hf(tmp_path)


def test_load_hf_config_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "tf_model.h5").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no weights") as info:
        load_hf(tmp_path)
    msg = str(info.value)
    assert "model.safetensors" in msg and "tf_model.h5" in msg and "save_pretrained" in msg


def test_load_hf_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf(tmp_path)


def test_load_hf_without_transformers_names_the_extra(tmp_path, monkeypatch):
    _fake_directory(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[hf\]'") as info:
        load_hf(tmp_path)
    assert isinstance(info.value, ImportError)
