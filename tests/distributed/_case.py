"""The tiny float64 problem the distributed tests share: built identically in the test process and in every rank."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape.problem import Problem

NUM_SAMPLES = 53
BATCH_SIZE = 16
# Uneven shards (and so uneven batch counts, with short last batches) for each world size.
SHARDS = {1: [53], 2: [31, 22], 3: [20, 11, 22]}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(NUM_SAMPLES, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (NUM_SAMPLES,), generator=g)
    return X, y


def model() -> nn.Module:
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.6 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return net


def shard(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = data()
    sizes = SHARDS[world_size]
    start = sum(sizes[:rank])
    return X[start : start + sizes[rank]], y[start : start + sizes[rank]]


def problem(data_pair: tuple[torch.Tensor, torch.Tensor], loss_fn: nn.Module | None = None, **kwargs) -> Problem:
    return Problem(model(), loss_fn or nn.CrossEntropyLoss(), data_pair, batch_size=BATCH_SIZE, **kwargs)


def analyses(p: Problem) -> dict:
    """Every quantity the equality tests compare, computed with fixed engines and seeds."""
    from landscape.linalg import power_iteration, spectral_density, top_eigen, trace
    from landscape.operators import empirical_fisher, ggn, hessian
    from landscape.spectrum import spectrum
    from landscape.surface import directions, surface

    op = hessian(p, engine="double_backward", block="loop")
    V = torch.randn(p.num_params, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    loss, grad = p.loss_and_grad()
    eig = top_eigen(op, k=2, seed=0)
    density = spectral_density(op, num_probes=3, num_steps=10, seed=0)
    spec = spectrum(p, k=2, num_probes=2, num_steps=10, seed=0, engine="double_backward", block="loop")
    dirs = directions.filter_normalized(p, num=2, seed=0)
    surf = surface(p, dirs, span=(-1.0, 1.0), resolution=5)
    return {
        "loss": p.loss(),
        "loss_and_grad": (loss, grad),
        "hvp": op @ V[:, 0],
        "hvp_block": op @ V,
        "ggn_block": ggn(p, engine="forward_over_reverse", block="loop") @ V,
        "fisher_block": empirical_fisher(p, engine="forward_over_reverse", block="loop") @ V,
        "top_eigen": eig.values,
        "power": power_iteration(op, k=1, seed=0, tol=5e-2, max_matvecs=40).values,
        "trace_hutchpp": trace(op, method="hutch++", num_matvecs=24, seed=0).value,
        "trace_hutchinson": trace(op, method="hutchinson", num_matvecs=12, seed=0).value,
        "density_nodes": density.nodes,
        "density_weights": density.weights,
        "spectrum_eigenvalues": spec.eigenvalues,
        "spectrum_trace": spec.trace.value,
        "surface_loss": surf.loss,
        "surface_accuracy": surf.accuracy,
        "num_samples": p.num_samples,
    }


def batches_in_rank_order(world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a data-parallel run over ``world_size`` ranks holds, as one process would hold them."""
    out = []
    for rank in range(world_size):
        X, y = shard(rank, world_size)
        out.extend(zip(torch.split(X, BATCH_SIZE), torch.split(y, BATCH_SIZE), strict=True))
    return out


# Quantities computed on minibatches or examples that every rank gathers whole (landscape.example_pool): bit-identical
# to one process. The others also use full-data products (all-reduced): equal to rounding.
GATHERED = ["batch_sharpness", "sam_m_sharpness", "stability_sgd_exact"]


def subset_spectrum(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Traces and top eigenvalues of ``spectrum(subsets=3)``: data subsets of whole batches, so ``p`` must hold the
    batches in rank order. With 2 and 3 ranks, some rank holds no batch of some subset."""
    from landscape.spectrum import spectrum

    spec = spectrum(p, k=1, num_probes=2, num_steps=8, seed=0, engine="double_backward", block="loop", subsets=3)
    return spec.subsets.traces, spec.subsets.lambda_max


def minibatch_analyses(p: Problem) -> dict:
    """Every minibatch and per-example analysis the equality tests compare: the draws are by global example index,
    so a data-parallel run draws the examples one process would."""
    from landscape.scaling import batch_sharpness, gradient_noise_scale, lr_batch_scaling
    from landscape.sharpness import sam_sharpness
    from landscape.stability import stability

    noise = gradient_noise_scale(p, small_batch=5, large_batch=20, num_pairs=3, seed=0)
    scaling = lr_batch_scaling(p, [8, 53], num_batches=2, noise_pairs=3, seed=0)
    exact = stability(p, "sgd", lr=0.5, batch_size=8, exact=True, seed=0)
    free = stability(p, "sgd", lr=0.5, batch_size=8, exact=False, num_probes=4, tol=1e-3, seed=0)
    return {
        "batch_sharpness": batch_sharpness(p, 10, num_batches=3, seed=0).values,
        "batch_sharpness_whole": batch_sharpness(p, NUM_SAMPLES, seed=0).values,
        "noise_scale": (noise.b_simple, noise.b_noise, noise.eps_max),
        "lr_batch_scaling": (scaling.lambda_mean, scaling.lambda_full),
        "sam_m_sharpness": sam_sharpness(p, 0.05, m=1, steps=2, seed=0).subset_values,
        "spectrum_subsets": subset_spectrum(p),
        "stability_sgd_exact": np.array([c.value for c in exact.criteria]),
        "stability_sgd_matrix_free": np.array([c.value for c in free.criteria]),
    }


# ------------------------------------------------------------------------------------------- a language model
LM_SEQUENCES = 7


def lm_batches(rank: int = 0, world_size: int = 1) -> list[dict]:
    """Token batches of a tiny causal LM, right-padded (so batches count different numbers of tokens), this rank's
    contiguous block of the sequences, in batches of 2."""
    from landscape import distributed

    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 16, (LM_SEQUENCES, 6), generator=g)
    lengths = torch.tensor([6, 4, 5, 6, 3, 6, 2])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    ids, mask = distributed.shard((ids, mask), rank, world_size)
    return [{"input_ids": ids[i : i + 2], "attention_mask": mask[i : i + 2]} for i in range(0, len(ids), 2)]


def lm_problem(batches: list[dict]) -> Problem:
    from landscape import losses
    from tests.test_transformers import gpt2

    return Problem(gpt2(), losses.causal_lm(), batches, dtype=torch.float64)


def lm_analyses(p: Problem) -> dict:
    """Token-weighted loss, gradient, Hessian and GGN blocks, the top eigenvalue and drawn examples."""
    from landscape.example_pool import Examples
    from landscape.linalg import top_eigen
    from landscape.operators import ggn, hessian

    V = torch.randn(p.num_params, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    drawn = Examples(p).take(torch.tensor([6, 0, 3, 4]))
    return {
        "num_counted": np.array([p.num_counted]),
        "loss_and_grad": p.loss_and_grad(),
        "hessian": (hessian(p, engine="double_backward") @ V).numpy(),
        "hessian_forward": (hessian(p, engine="forward_over_reverse") @ V).numpy(),
        "ggn": (ggn(p) @ V).numpy(),
        "top": top_eigen(hessian(p, engine="double_backward"), k=1, seed=0).values,
        "drawn": (drawn["input_ids"].numpy(), drawn["attention_mask"].numpy()),
    }


# ------------------------------------------------------------------------------------------- FSDP2-sharded models
def fully_sharded(net: nn.Module, kind: str) -> nn.Module:
    """``net`` wrapped as FSDP2 would be for training: each layer (MLP: each Linear; GPT-2: each transformer block)
    its own group, the root holding the rest."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in net if any(True for _ in m.parameters())] if kind == "mlp" else list(net.transformer.h)
    for layer in layers:
        fully_shard(layer)
    fully_shard(net)
    return net


def sharded_problem(
    kind: str, rank: int, world_size: int, *, sharded: bool = True, dtype: torch.dtype = torch.float64
) -> Problem:
    """The MLP on this rank's uneven shard (``kind="mlp"``) or the tiny GPT-2 on its token batches (``"gpt2"``),
    analysed in float64, with the model (in ``dtype``) FSDP2-sharded over the ranks; ``sharded=False``: the unsharded
    model on all the data in this process alone (the reference)."""
    from landscape import losses
    from tests.test_transformers import gpt2

    net = (model() if kind == "mlp" else gpt2()).to(dtype)
    if sharded:
        net = fully_sharded(net, kind)
    if kind == "mlp":
        pair = shard(rank, world_size) if sharded else data()
        return Problem(
            net,
            nn.CrossEntropyLoss(),
            pair,
            batch_size=BATCH_SIZE,
            distributed=None if sharded else False,
            dtype=torch.float64,
        )
    batches = lm_batches(rank, world_size) if sharded else lm_batches()
    return Problem(net, losses.causal_lm(), batches, dtype=torch.float64, distributed=None if sharded else False)


def sharded_analyses(p: Problem) -> dict:
    """The spectral estimators of issue 21 on ``p`` (vectors gathered whole), with fixed seeds and engines."""
    from landscape.blocks import block_spectra
    from landscape.linalg import diagonal, lanczos, spectral_density, top_eigen, trace
    from landscape.memory import estimate
    from landscape.operators import hessian
    from landscape.spectrum import spectrum

    op = hessian(p, engine="double_backward", block="loop")
    space = op.space
    V = torch.randn(p.num_params, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eig = top_eigen(op, k=3, seed=0, tol=1e-10)
    density = spectral_density(op, num_probes=2, num_steps=10, seed=0)
    spec = spectrum(p, k=3, num_probes=2, num_steps=12, seed=0, engine="double_backward", block="loop")
    dec = lanczos(op, 8, num_probes=2, seed=0)
    blocks = block_spectra(p, k=2, num_probes=2, num_steps=8, seed=0, dense_max=0, traces="slq")
    # Thick-restarted block top-k on shards: per-block CGS2 and restarts on each rank's entries.
    refined = block_spectra(
        p, k=2, num_probes=1, num_steps=3, seed=0, dense_max=0, traces="slq", full=False, refine=12, max_basis=5
    )
    return {
        "block_eigenvalues": np.stack([blocks.spectra[n].eigenvalues for n in blocks.names]),
        "block_traces": blocks.traces,
        "block_refined": np.stack([refined.spectra[n].eigenvalues for n in refined.names]),
        "block_refined_steps": refined.settings["refine"]["steps"],
        "block_js": np.asarray(blocks.heterogeneity),
        "block_full": np.array([blocks.full.lambda_max_full, blocks.full.lambda_max_blocks]),
        "hvp_block": space.gather(op @ space.local(V)),
        "top_eigen": eig.values,
        "top_vectors_abs": space.gather(eig.vectors).abs(),
        "trace_hutchpp": trace(op, method="hutch++", num_matvecs=24, seed=0).value,
        "trace_hutchinson": trace(op, method="hutchinson", num_matvecs=12, seed=0).value,
        "diagonal": space.gather(diagonal(op, method="hutchinson", num_matvecs=12, seed=0).value),
        "density_nodes": density.nodes,
        "density_weights": density.weights,
        "spectrum_eigenvalues": spec.eigenvalues,
        "spectrum_trace": spec.trace.value,
        "spectrum_density": spec.density.density(np.linspace(-1, 3, 9)),
        "basis_bytes": dec.settings["basis_bytes"],
        "krylov_estimate": estimate(p, "spectrum", num_probes=2, num_steps=12).parts["Krylov vectors"],
        "trace_auto_note": trace(op, num_matvecs=6, seed=0).settings["note"],
    }


def finite_difference_analyses(p: Problem) -> dict:
    """Finite-difference products and top eigenvalues of the sharded model against the exact ones on shards."""
    from landscape.linalg import top_eigen
    from landscape.operators import hessian
    from landscape.spectrum import spectrum

    exact = hessian(p, engine="double_backward", block="loop")
    fd = hessian(p, engine="finite_difference")
    space = exact.space
    V = space.local(torch.randn(p.num_params, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    A, B = exact @ V, fd @ V
    errors = [space.norm(A[:, j] - B[:, j]) / space.norm(A[:, j]) for j in range(V.shape[1])]
    bound = fd.error_bound
    top_fd = top_eigen(fd, k=3, seed=0, tol=1e-6)
    spec = spectrum(p, k=2, num_probes=1, num_steps=6, seed=0, engine="finite_difference")
    spec_exact = spectrum(p, k=2, num_probes=1, num_steps=6, seed=0, engine="double_backward")
    return {
        "spectrum": (spec.eigenvalues, spec_exact.eigenvalues),
        "spectrum_products": spec.settings["products"],
        "errors": errors,
        "bound": bound,
        "top_exact": top_eigen(exact, k=3, seed=0, tol=1e-10).values,
        "top_fd": top_fd.values,
        "top_bound": fd.error_bound,
        "settings": fd.settings,
    }


def mixed_precision_analyses(rank: int, world_size: int) -> dict:
    """The tiny GPT-2 sharded with a bf16 ``param_dtype`` policy (float32 master shards): exact products analyse the
    float32 weights (equal to the unsharded float32 model); finite differences of bf16 gradients are refused."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from landscape import losses
    from landscape.linalg import top_eigen
    from landscape.operators import hessian
    from tests.test_transformers import gpt2

    net = gpt2().float()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in net.transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(net, mp_policy=policy)
    p = Problem(net, losses.causal_lm(), lm_batches(rank, world_size), dtype=torch.float32)
    reference = sharded_problem("gpt2", rank, world_size, sharded=False, dtype=torch.float32)
    try:
        hessian(p, engine="finite_difference")
        refused = ""
    except ValueError as err:
        refused = str(err)
    return {
        "top": top_eigen(hessian(p), k=2, seed=0).values,
        "reference": top_eigen(hessian(reference), k=2, seed=0).values,
        "refused": refused,
    }
