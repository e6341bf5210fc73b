"""Grid points written module by module (``point_memory="per_module"``) and directions stored in bfloat16: the same
values bit for bit as whole points and as the directions' float32 upcast, with less held, and a loud fall-back where
a model uses a parameter outside its own module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.surface import directions as dirs
from landscape.surface import evaluate, filter_normalized, from_vectors, interpolate, random, surface
from landscape.surface.per_module import OutsideModuleError, placeholders
from tests.conftest import make_case
from tests.linalg.test_thick_restart import _LiveBytes
from tests.surface.helpers import assert_same_state, case_problem, model_state


def _same(a, b) -> None:
    assert np.array_equal(a.loss, b.loss)
    assert (a.accuracy is None and b.accuracy is None) or np.array_equal(a.accuracy, b.accuracy)


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval", "cnn_bn_train"])
def test_per_module_points_equal_whole_points_bit_for_bit(name):
    problem = case_problem(make_case(name))
    d = filter_normalized(problem, 2, seed=3)
    before = model_state(problem.model)
    whole = surface(problem, d, span=(-1, 1), resolution=5, point_memory="whole")
    per_module = surface(problem, d, span=(-1, 1), resolution=5, point_memory="per_module")
    assert_same_state(before, model_state(problem.model))
    _same(whole, per_module)
    assert whole.settings["point_memory"] == "whole" and per_module.settings["point_memory"] == "per_module"
    assert per_module.loss[2, 2] == problem.loss()  # the origin, bit for bit
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in problem.model.modules())


def test_tied_weights_of_a_language_model_are_written_in_each_module():
    transformers = pytest.importorskip("transformers")
    from landscape import losses

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)  # transformers initialises from the global generator
    lm = transformers.GPT2LMHeadModel(cfg).eval()
    assert lm.lm_head.weight is lm.transformer.wte.weight
    ids = torch.randint(40, (2, 9), generator=torch.Generator().manual_seed(1))
    problem = Problem(lm, losses.causal_lm(), [{"input_ids": ids}])
    d = filter_normalized(problem, 2, seed=0)
    whole = surface(problem, d, resolution=3, point_memory="whole")
    per_module = surface(problem, d, resolution=3, point_memory="per_module")
    _same(whole, per_module)
    assert per_module.settings["point_memory"] == "per_module" and per_module.loss[1, 1] == problem.loss()


class _ReadsAChildsWeight(nn.Module):
    """A parent computing with its child's weight outside the child's call: per-module points cannot serve it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4).double()
        self.b = nn.Linear(4, 3).double()

    def forward(self, x):
        return self.b(x @ self.a.weight.T)


def test_a_parameter_used_outside_its_module_falls_back_to_whole_points():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(3, (8,), generator=g)
    problem = Problem(_ReadsAChildsWeight(), nn.CrossEntropyLoss(), [(X, y)])
    d = random(problem, 2, seed=0)
    before = model_state(problem.model)
    whole = surface(problem, d, resolution=3, point_memory="whole")
    tried = surface(problem, d, resolution=3, point_memory="per_module")
    assert_same_state(before, model_state(problem.model))
    _same(whole, tried)  # never a stale or uninitialised value
    assert tried.settings["point_memory"] == "whole"
    assert "outside the module that owns it" in tried.settings["memory"]["per_module_failed"]


def test_placeholders_show_their_metadata_and_refuse_their_values():
    held = placeholders({"w": torch.zeros(3, 5, dtype=torch.float64)})["w"]
    assert held.shape == (3, 5) and held.dtype == torch.float64 and held.device.type == "cpu"
    assert held.dim() == 2 and held.numel() == 15 and held.is_floating_point()
    with torch._C.DisableTorchFunctionSubclass():
        assert held.untyped_storage().nbytes() == 8  # one broadcast scalar, not a tensor's worth
    for use in (
        lambda: held + 1,
        lambda: torch.ones(2, 3, dtype=torch.float64) @ held,
        lambda: held.T,
        lambda: held[0],
    ):
        with pytest.raises(OutsideModuleError, match="outside the module"):
            use()


def _deep_mlp() -> Problem:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64) for _ in range(8)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())], nn.Linear(64, 3)).double()
    X, y = torch.randn(16, 64, generator=g, dtype=torch.float64), torch.randint(3, (16,), generator=g)
    return Problem(model, nn.CrossEntropyLoss(), [(X, y)])


def test_per_module_points_hold_one_module_instead_of_a_whole_parameter_set():
    """Counted bytes (a tracking allocator): whole points hold one more copy of every parameter through the run,
    per-module points only the tensors of the module being run (one 64 x 64 layer of nine)."""
    problem = _deep_mlp()
    d = filter_normalized(problem, 2, seed=0)
    with _LiveBytes() as whole:
        a = surface(problem, d, resolution=3, point_memory="whole")
    with _LiveBytes() as per_module:
        b = surface(problem, d, resolution=3, point_memory="per_module")
    _same(a, b)
    point = problem.num_params * 8
    layer = (64 * 64 + 64) * 8
    assert whole.peak >= point
    assert per_module.peak <= whole.peak - point + 2 * layer, (whole.peak, per_module.peak, point)


def test_auto_writes_per_module_from_the_threshold_on(monkeypatch):
    problem = _deep_mlp()
    d = filter_normalized(problem, 2, seed=0)
    assert surface(problem, d, resolution=2).settings["point_memory"] == "whole"  # 0.3 MB: below 16 MiB
    monkeypatch.setattr(evaluate, "PER_MODULE_BYTES", problem.num_params * 8)
    assert surface(problem, d, resolution=2).settings["point_memory"] == "per_module"
    assert surface(problem, d, resolution=2, batch_points=2).settings["point_memory"] == "whole"  # stacked: vmap


def test_bad_point_memory_is_named():
    problem = _deep_mlp()
    d = random(problem, 1, seed=0)
    with pytest.raises(ValueError, match="point_memory must be one of"):
        surface(problem, d, resolution=2, point_memory="lazy")
    with pytest.raises(ValueError, match="batch_points=1"):
        surface(problem, d, resolution=2, point_memory="per_module", batch_points=2)


def test_interpolation_writes_parameters_and_buffers_per_module():
    case = make_case("cnn_bn_eval")
    problem = case_problem(case)
    other = make_case("cnn_bn_eval").model
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
        for buf in other.buffers():
            if buf.is_floating_point():
                buf.add_(0.25)
    whole = interpolate(problem, problem.model, other, resolution=5, point_memory="whole")
    per_module = interpolate(problem, problem.model, other, resolution=5, point_memory="per_module")
    _same(whole, per_module)
    assert per_module.settings["point_memory"] == "per_module"


@pytest.mark.parametrize("make", [dirs.random, dirs.filter_normalized, dirs.layer_normalized])
def test_bfloat16_directions_are_the_rounded_float32_ones(make):
    problem = case_problem(make_case("cnn_bn_eval"))  # float64: each entry rounded from the problem's dtype
    exact = make(problem, 2, seed=5)
    narrow = make(problem, 2, seed=5, dtype=torch.bfloat16)
    assert narrow.vectors.dtype == torch.bfloat16 and torch.equal(narrow.vectors, exact.vectors.bfloat16())
    assert narrow.settings["dtype"] == "bfloat16" and "dtype" not in exact.settings  # default keys unchanged


def test_bfloat16_model_normalized_directions_keep_the_weights_norm():
    problem = case_problem(make_case("cnn_bn_eval"))
    narrow = dirs.model_normalized(problem, 2, seed=5, dtype=torch.bfloat16)
    norms = narrow.vectors.double().norm(dim=1)
    w_norm = problem.params_vector().norm()
    # Every entry rounded to 8 significant bits (relative error <= 2^-9), so is the norm.
    torch.testing.assert_close(norms, torch.full_like(norms, float(w_norm)), rtol=2**-9, atol=0)


@pytest.mark.parametrize("point_memory", ["whole", "per_module"])
def test_a_surface_of_bfloat16_directions_is_the_surface_of_their_upcast(point_memory, tmp_path):
    """Added to float64 weights as they are, without a wider copy: the same values as the float64 upcast."""
    problem = case_problem(make_case("cnn_bn_eval"))
    narrow = filter_normalized(problem, 2, seed=1, dtype=torch.bfloat16)
    upcast = from_vectors(problem, narrow.vectors.double())
    a = surface(problem, narrow, resolution=5, point_memory=point_memory)
    b = surface(problem, upcast, resolution=5, point_memory=point_memory)
    _same(a, b)
    cached = surface(problem, narrow, resolution=3, cache=tmp_path / "c.h5")  # numpy has no bfloat16: stored upcast
    again = surface(problem, narrow, resolution=3, cache=tmp_path / "c.h5")
    assert again.settings["cache"]["points_from_cache"] == 9
    _same(cached, again)


def test_bfloat16_directions_hold_half_the_block():
    problem = case_problem(make_case("cnn_bn_eval"))
    numel = max(problem.param_numels)
    with _LiveBytes() as alloc:
        d = filter_normalized(problem, 3, seed=0, dtype=torch.bfloat16)
    block = d.vectors.numel() * 2
    assert alloc.peak <= block + 4 * numel * 8  # the block, the float64 draw and the problem-dtype piece
    with pytest.raises(TypeError, match="floating-point torch.dtype"):
        filter_normalized(problem, 1, dtype=torch.int8)
