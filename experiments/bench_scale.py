"""Benchmark at real scale: ResNet-18 and GPT-2 small, one method per fresh process, wall time and peak RSS.

Workloads (``/work/shared/PEERS.md``, "At real scale"):

- ``resnet18``: :func:`landscape.models.resnet18` (CIFAR variant, 11,173,962 parameters, BatchNorm in eval mode) on
  one batch of 128 synthetic images 3x32x32 (:func:`landscape.data.synthetic_images`), mean cross-entropy.
- ``gpt2``: GPT-2 small shape built from ``GPT2Config`` (12 layers, 12 heads, width 768, vocabulary 50,257; 124M
  parameters, untrained: the cost does not depend on the weights) on one batch of 4 x 64 random tokens, causal LM
  loss; landscape runs the ``sdpa`` model (its curvature products on the math kernel), the peers ``eager``
  attention (their double backward cannot go through the fused CPU kernel).

Methods (``--methods``), each in a fresh ``python`` process so that its peak RSS (``resource.getrusage``) is its own:

- ``gradient``: a plain torch ``loss.backward()``: the baseline every time and memory is divided by.
- ``forward``: a plain forward pass without gradients; ``surface``: a 4 x 4 filter-normalised loss surface
  (``landscape.surface.surface``), time per grid point (to divide by the forward's); ``surface_bf16``: the same
  with the directions stored in bfloat16 (``filter_normalized(..., dtype=torch.bfloat16)``).
- ``hvp``: ``landscape.hessian(problem) @ v`` with defaults: the first product and the median of later ones.
- ``top1``, ``top5``: ``landscape.top_eigen(op, k)`` with defaults; ``top1_lean``: the eigenvalue alone
  (``vectors=False``: the three-term recurrence, two vectors and the product's) to ``tol=1e-3``;
  ``trace``: ``landscape.trace(op)``; ``spectrum``: ``landscape.spectrum(problem)`` (top-5, trace, density);
  ``top1_sure``: ``top1_lean`` with ``guarantee=1e-3`` (Kuczynski & Wozniakowski's gap-free minimum of steps:
  1e-3 of the spread); ``top1_relative``: the same guarantee relative to the eigenvalue itself
  (``guarantee_scale="eigenvalue"``: "the top eigenvalue to 1e-3", certified with probability 0.99).
- ``sam``: ``sam_sharpness(rho=0.05, steps=5)``; ``stability``: ``stability(problem, "gd", lr=0.01)``.
- ``noise_scale``: ``gradient_noise_scale(num_pairs=4)``; ``batch_sharpness``: ``batch_sharpness`` of half-batches
  (2 of the 4 sequences, 64 of the 128 images), 2 batches, ``tol=1e-3``; ``scaling``: ``lr_batch_scaling`` at a
  quarter, half and all of the batch, 2 batches each, ``tol=1e-3``, 4 noise pairs; ``layerwise``:
  ``layerwise_curvature`` per module with defaults (block traces and top eigenvalues); ``report``: the HTML report
  (``analyse`` and ``write_report``) with light settings, every section but the batch-size scaling;
  ``report_sharpness``: its sharpness section alone.
- ``reference``: the top eigenvalue to a tight tolerance (``top_eigen(tol=1e-7 or 1e-6, vectors=False)``), in
  ``experiments/results/scale_reference.json``: every top-1 figure's error is measured against it. GPT-2 small's
  (stop 32) comes from ``experiments/ritz_trajectory.py --float64-vectors --reference`` instead: 400 steps, with
  Kuczynski & Wozniakowski's upper bound (stops 17-31 used a float32 run whose Ritz values had crept 0.4% high).
- ``pyhessian``: ``PyHessian(data=(X, y)).eigenvalues(top_n=1)`` (power iteration, ``tol=1e-3``: its default).
  ``pyhessian_long``: the same power iteration without its stop rule (``tol=0``), stopped after ``--peer-cap``
  seconds, its Rayleigh quotient recorded at every product: how long the fastest peer takes to the accuracy
  ``top1_relative`` certifies (or that it has not reached it by then).
- ``eigenthings``: hessian-eigenthings 1.0.0a5 ``lanczos(HessianOperator, k=1, max_iter=20)``.
- ``curvlinops``: ``scipy.sparse.linalg.eigsh(HessianLinearOperator.to_scipy(), k=1, which="LA", tol=1e-3)``.

Every landscape method also records ``landscape.memory.estimate`` made before it runs, to compare with the peak.

Usage::

    python experiments/bench_scale.py                               # every workload and method (~1.5 h)
    python experiments/bench_scale.py --workloads resnet18 --methods gradient hvp top1
    python experiments/bench_scale.py --one resnet18 top1           # one method in this process (JSON line)
    python experiments/bench_scale.py --workloads resnet18 --methods forward surface --repeat 5  # 5 rounds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import landscape
from landscape import losses
from landscape.models import resnet18

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REFERENCE = RESULTS / "scale_reference.json"
SEED = 0
# Relative Ritz residual of the reference run: its eigenvalue error is about residual^2 / gap, far below 1e-6.
REFERENCE_TOL = {"gpt2": 1e-7, "resnet18": 1e-6}
WORKLOADS = ("resnet18", "gpt2")
METHODS = (
    "gradient",
    "forward",
    "surface",
    "surface_bf16",
    "hvp",
    "top1",
    "top1_lean",
    "top1_sure",
    "top1_relative",
    "top5",
    "trace",
    "spectrum",
    "sam",
    "stability",
    "noise_scale",
    "batch_sharpness",
    "scaling",
    "layerwise",
    "blocks",
    "blocks_fine",
    "blocks_modules",
    "report",
    "report_sharpness",
    "gradient_long",
    "hvp_long",
    "hvp_long_chunked",
    "pyhessian",
    "pyhessian_long",
    "eigenthings",
    "curvlinops",
)
ALL = ("reference", *METHODS)


# ---------------------------------------------------------------------------------------------------- workloads
def gpt2_model(attn: str) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(
        n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024, attn_implementation=attn
    )
    torch.manual_seed(SEED)  # transformers initialises from the global generator; a fresh process, nothing to spoil
    return transformers.GPT2LMHeadModel(cfg).eval()


def gpt2_tokens(length: int = 64) -> torch.Tensor:
    return torch.randint(50257, (4, length), generator=torch.Generator().manual_seed(SEED))


def resnet_data() -> tuple[torch.Tensor, torch.Tensor]:
    return landscape.data.synthetic_images(128, seed=SEED)


class NextToken(nn.Module):
    """``input_ids -> (tokens, vocab)`` logits of every position but the last: the peers' supervised form."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits[:, :-1].flatten(0, 1)


def supervised(workload: str, attn: str = "eager") -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``(model, X, y)`` with ``CrossEntropyLoss()(model(X), y)`` the workload's loss."""
    if workload == "resnet18":
        X, y = resnet_data()
        return resnet18(seed=SEED).eval(), X, y
    ids = gpt2_tokens()
    return NextToken(gpt2_model(attn)).eval(), ids, ids[:, 1:].flatten()


def problem(workload: str) -> landscape.Problem:
    if workload == "resnet18":
        X, y = resnet_data()
        return landscape.Problem(resnet18(seed=SEED), nn.CrossEntropyLoss(), [(X, y)])
    return landscape.Problem(gpt2_model("sdpa"), losses.causal_lm(), [{"input_ids": gpt2_tokens()}])


# ---------------------------------------------------------------------------------------------------- methods
def peak_rss() -> float:
    """Peak resident set of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def run_gradient(workload: str) -> dict:
    model, X, y = supervised(workload, attn="sdpa")
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(4):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss_fn(model(X), y).backward()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times[1:]), "first_s": times[0]}


def run_forward(workload: str) -> dict:
    """A plain full-batch forward pass without gradients: the baseline of a loss surface."""
    model, X, y = supervised(workload, attn="sdpa")
    loss_fn = nn.CrossEntropyLoss()
    times = []
    with torch.no_grad():
        for _ in range(4):
            t0 = time.perf_counter()
            loss_fn(model(X), y)
            times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times[1:])}


def run_surface(workload: str, dtype: torch.dtype | None = None) -> dict:
    """A 2D filter-normalised surface, 4 x 4 points (loss and accuracy): per point, against a forward. Like the
    forward's median, which leaves its first (cold) call out, the timed surface follows a 2 x 2 one (warm-up)."""
    p = problem(workload)
    dirs = landscape.surface.filter_normalized(p, 2, seed=SEED, dtype=dtype)
    landscape.surface.surface(p, dirs, resolution=2)
    t0 = time.perf_counter()
    s = landscape.surface.surface(p, dirs, resolution=4)
    return {
        "seconds": (time.perf_counter() - t0) / 16,
        "note": f"per grid point (16 points), point_memory {s.settings['point_memory']}",
        "min_loss": float(s.loss.min()),
    }


def run_surface_bf16(workload: str) -> dict:
    return run_surface(workload, torch.bfloat16)


def estimate(p: landscape.Problem, analysis: str, **settings) -> dict:
    if not hasattr(landscape.memory, "estimate"):
        return {}
    est = landscape.memory.estimate(p, analysis, **settings)
    return {"estimate_gib": est.total / 2**30, "estimate_parts": {k: v / 2**30 for k, v in est.parts.items()}}


# Long sequences (GPT-2 only): 4 x 256 tokens, where the (tokens, vocab) buffers of the loss weigh 0.2 GB each.
LONG = 256


def long_problem(workload: str, chunk: int | None = None) -> landscape.Problem:
    if workload != "gpt2":
        raise ValueError("the long-sequence methods are for the gpt2 workload")
    model = gpt2_model("sdpa")
    loss = losses.causal_lm(chunk=chunk, head=model.lm_head if chunk else None)
    return landscape.Problem(model, loss, [{"input_ids": gpt2_tokens(LONG)}])


def run_gradient_long(workload: str) -> dict:
    """A plain gradient of the long-sequence loss (the baseline of the long-sequence HVPs)."""
    p = long_problem(workload)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        p.loss_and_grad()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times[1:]), "first_s": times[0], "note": f"4 x {LONG} tokens"}


def run_hvp_long(workload: str) -> dict:
    """One Hessian-vector product (double backward) on the long sequences, the loss as autograd writes it."""
    return run_hvp(workload, long_problem(workload), note=f"4 x {LONG} tokens")


def run_hvp_long_chunked(workload: str) -> dict:
    """The same with the head fused into the loss, 128 tokens at a time (``causal_lm(chunk=128, head=)``)."""
    return run_hvp(workload, long_problem(workload, chunk=128), note=f"4 x {LONG} tokens, chunk 128")


def run_hvp(workload: str, p: landscape.Problem | None = None, note: str = "") -> dict:
    p = problem(workload) if p is None else p
    info = estimate(p, "hvp")
    op = landscape.hessian(p, engine="double_backward") if note else landscape.hessian(p)
    v = torch.randn(p.num_params, generator=torch.Generator().manual_seed(SEED))
    t0 = time.perf_counter()
    op @ v
    first = time.perf_counter() - t0
    later = []
    for _ in range(3):
        t0 = time.perf_counter()
        op @ v
        later.append(time.perf_counter() - t0)
    return {**info, "first_s": first, "seconds": statistics.median(later), "chosen": op.chosen, "note": note}


def _top(workload: str, k: int, **kw) -> dict:
    p = problem(workload)
    info = estimate(p, "top_eigen", k=k, **kw)
    t0 = time.perf_counter()
    r = landscape.top_eigen(landscape.hessian(p), k=k, seed=SEED, **kw)
    return {
        **info,
        "seconds": time.perf_counter() - t0,
        "eigenvalues": [float(x) for x in r.values],
        "products": int(r.num_matvecs),
        "converged": bool(r.converged.all()),
    }


def run_top1(workload: str) -> dict:
    return _top(workload, 1)


def run_top1_lean(workload: str) -> dict:
    return _top(workload, 1, vectors=False, tol=1e-3)


def run_top1_sure(workload: str) -> dict:
    """The two-vector run with Kuczynski & Wozniakowski's guarantee: within 1e-3 of the spread with probability
    0.99 whatever the gaps (230 steps on GPT-2 small)."""
    return _top(workload, 1, vectors=False, tol=1e-3, guarantee=1e-3)


def run_top1_relative(workload: str) -> dict:
    """The eigenvalue to 1e-3 of itself with probability 0.99, whatever the gaps (336 steps on GPT-2 small)."""
    return _top(workload, 1, vectors=False, tol=1e-3, guarantee=1e-3, guarantee_scale="eigenvalue")


def run_sam(workload: str) -> dict:
    """SAM sharpness (rho 0.05, p = 2) with 5 ascent steps: 6 gradients and a loss."""
    p = problem(workload)
    t0 = time.perf_counter()
    r = landscape.sam_sharpness(p, rho=0.05, steps=5, seed=SEED)
    return {"seconds": time.perf_counter() - t0, "value": float(r.value), "note": "SAM p=2, rho 0.05, 5 steps"}


def run_stability(workload: str) -> dict:
    """Gradient descent at lr 0.01: the full-batch criterion (the top eigenvalue, to the default tol 1e-5)."""
    p = problem(workload)
    info = estimate(p, "top_eigen", k=1, vectors=False)
    t0 = time.perf_counter()
    r = landscape.stability(p, "gd", lr=0.01, seed=SEED)
    lam = r.criteria[0].value if r.criteria else None  # the gradient-descent criterion's value is lambda_max
    return {
        **info,
        "seconds": time.perf_counter() - t0,
        "eigenvalues": [float(lam)] if lam is not None else [],
        "products": int(r.num_matvecs),
        "note": f"stable: {r.stable}, max stable lr {r.max_stable_lr:.4g}",
    }


def run_noise_scale(workload: str) -> dict:
    """The gradient noise scale from 4 pairs of small- and large-batch gradients (one product per pair as drawn)."""
    p = problem(workload)
    t0 = time.perf_counter()
    r = landscape.gradient_noise_scale(p, num_pairs=4, seed=SEED)
    return {"seconds": time.perf_counter() - t0, "value": float(r.b_simple), "note": "B_simple, 4 pairs"}


def run_batch_sharpness(workload: str) -> dict:
    """Batch sharpness of half-batches: the top eigenvalue of 2 minibatch Hessians (two-vector runs)."""
    p = problem(workload)
    half = p.num_samples // 2
    t0 = time.perf_counter()
    r = landscape.batch_sharpness(p, half, num_batches=2, seed=SEED, tol=1e-3)
    return {
        "seconds": time.perf_counter() - t0,
        "value": float(r.values.mean()),
        "products": int(r.num_matvecs),
        "note": f"batch {half}, 2 batches",
    }


def run_scaling(workload: str) -> dict:
    """``lr_batch_scaling`` with light settings: batch sharpness (2 batches, ``tol=1e-3``) at half and a quarter of
    the batch (GPT-2: 2 of the 4 sequences only) and the whole batch, and the noise scale from 4 pairs."""
    p = problem(workload)
    n = p.num_samples
    sizes = sorted({max(n // 4, 2), n // 2})
    t0 = time.perf_counter()
    r = landscape.lr_batch_scaling(p, sizes, num_batches=2, seed=SEED, tol=1e-3, noise_pairs=4)
    lrs = ", ".join(f"B={b}: {lr:.4g}" for b, lr in zip(r.batch_sizes, r.spectral_lr, strict=True))
    return {
        "seconds": time.perf_counter() - t0,
        "value": float(r.lambda_full),
        "products": int(r.num_matvecs),
        "note": f"batch sizes {[int(b) for b in r.batch_sizes]}, 2 batches each; max stable SGD lr {lrs}; "
        f"regime {r.regime}; B_simple {r.noise.b_simple:.3g}",
    }


def run_layerwise(workload: str) -> dict:
    """Per-module block traces and top eigenvalues (``layerwise_curvature`` with defaults)."""
    p = problem(workload)
    t0 = time.perf_counter()
    r = landscape.layerwise_curvature(p, seed=SEED)
    return {"seconds": time.perf_counter() - t0, "note": f"{len(r.names)} blocks, method {r.method}"}


# Coarse blocks of each workload (by kind of layer), so a block spectrum at this scale is a few passes, not hours.
COARSE_BLOCKS = {
    "gpt2": {"embeddings": ["*wte*", "*wpe*"], "attention": "*attn*", "mlp": "*mlp*", "layernorm": "*ln_*"},
    # landscape.models.resnet18 is a Sequential: 0 the stem, 1-8 the residual blocks of stages 1-4, 11 the head.
    "resnet18": {"stem": "0.*", "stages 1-2": "[1-4].*", "stages 3-4": "[5-8].*", "head": "11.*"},
}


def run_blocks(workload: str) -> dict:
    """``block_spectra`` of a few coarse blocks: one probe, 8 steps (every block's products in one pass a step)."""
    p = problem(workload)
    settings = {"num_probes": 1, "num_steps": 8}
    blocks = COARSE_BLOCKS[workload]
    info = estimate(p, "block_spectra", columns=len(blocks), **settings)
    t0 = time.perf_counter()
    r = landscape.block_spectra(p, by=blocks, k=1, full=False, seed=SEED, **settings)
    h = r.heterogeneity
    return {
        **info,
        "seconds": time.perf_counter() - t0,
        "products": int(r.num_matvecs),
        "block_lambda_max": dict(zip(r.names, (float(x) for x in r.lambda_max), strict=True)),
        "note": f"{len(r.names)} blocks in {r.passes} passes ({r.settings['columns']} columns each), traces "
        f"{r.trace_method}, JS mean {h.mean:.3f} max {h.max:.3f}, {r.settings['reorthogonalisation']}",
    }


# Fine blocks: every module with parameters of ResNet-18 (41: each convolution, each BatchNorm, the head), every
# transformer block of GPT-2 small with the embeddings and the final LayerNorm as blocks of their own (14).
FINE_BLOCKS = {
    "gpt2": "gpt2_layers",
    "resnet18": "module",
}
FINE_STEPS = {"gpt2": 6, "resnet18": 6}


def run_blocks_modules(workload: str) -> dict:
    """:func:`run_blocks_fine` with every module owning parameters a block (GPT-2 small: 75)."""
    return run_blocks_fine(workload, "module")


def run_blocks_fine(workload: str, by: str | None = None) -> dict:
    """``block_spectra`` at a fine granularity (``FINE_BLOCKS``, or ``by``): one probe, ``FINE_STEPS`` steps,
    restricted products of every block in one data pass a step."""
    p = problem(workload)
    by = by or FINE_BLOCKS[workload]
    if by == "gpt2_layers":
        by = {"embeddings": ["*wte*", "*wpe*"], **{f"block {i}": f"*.h.{i}.*" for i in range(12)}, "ln_f": "*ln_f*"}
    settings = {"num_probes": 1, "num_steps": FINE_STEPS[workload]}
    t0 = time.perf_counter()
    r = landscape.block_spectra(p, by=by, k=1, full=False, traces="slq", seed=SEED, **settings)
    h = r.heterogeneity
    return {
        "seconds": time.perf_counter() - t0,
        "products": int(r.num_matvecs),
        "passes": int(r.passes),
        "blocks": len(r.names),
        "block_lambda_max": dict(zip(r.names, (float(x) for x in r.lambda_max), strict=True)),
        "note": f"{len(r.names)} blocks in {r.passes} passes, {r.settings['products']}, JS mean {h.mean:.3f} max "
        f"{h.max:.3f} ({h.most_different}), {r.settings['reorthogonalisation']}",
    }


def run_top5(workload: str) -> dict:
    return _top(workload, 5)


def run_reference(workload: str) -> dict:
    tol = REFERENCE_TOL[workload]
    out = _top(workload, 1, tol=tol, max_matvecs=300, vectors=False)
    refs = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    refs[workload] = {"eigenvalue": out["eigenvalues"][0], "products": out["products"], "tol": tol}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(refs, indent=1) + "\n")
    return out


def run_trace(workload: str) -> dict:
    p = problem(workload)
    t0 = time.perf_counter()
    r = landscape.trace(landscape.hessian(p), seed=SEED)
    seconds = time.perf_counter() - t0
    # The estimate of what ran: trace() fits its estimator and blocks to the memory budget first (on GPT-2 small,
    # Hutchinson in small blocks instead of Hutch++'s 233 vectors), as settings["note"] says.
    settings = {"method": r.method, "num_matvecs": r.num_matvecs, "block_size": r.settings.get("block_size")}
    return {
        **estimate(p, "trace", **settings),
        "note": r.settings.get("note") or r.method,
        "seconds": seconds,
        "trace": float(r.value),
        "stderr": float(r.stderr),
        "products": int(r.num_matvecs),
    }


def run_spectrum(workload: str) -> dict:
    p = problem(workload)
    t0 = time.perf_counter()
    s = landscape.spectrum(p, seed=SEED)
    # The estimate of the plan spectrum() chose when it started (the most probes at once that fit the budget it
    # derived from the memory free then), as it records it.
    plan = s.settings["memory"]
    return {
        "estimate_gib": plan["expected_peak_bytes"] / 2**30,
        "estimate_parts": {k: v / 2**30 for k, v in plan["parts"].items()},
        "seconds": time.perf_counter() - t0,
        "eigenvalues": [float(x) for x in s.eigenvalues],
        "trace": float(s.trace.value),
        "products": int(s.num_matvecs),
        "note": f"{plan['probes_at_once']} probes at once in {s.settings['probe_groups']} group(s); "
        f"{s.settings['reorthogonalisation']}",
    }


def run_report_sharpness(workload: str) -> dict:
    """The report's sharpness section alone: ``sharpness(rho=0.05, steps=2, num_samples=4, num_matvecs=10,
    keskar=False)`` (top eigenvalue, trace, Frobenius norm, SAM, ASAM, average-case), its peak against the budget."""
    p = problem(workload)
    t0 = time.perf_counter()
    s = landscape.sharpness(p, 0.05, seed=SEED, steps=2, num_samples=4, num_matvecs=10, keskar=False)
    return {
        "seconds": time.perf_counter() - t0,
        "eigenvalues": [float(s.lambda_max.values[0])] if s.lambda_max is not None else [],
        "note": f"trace {s.trace.method} ({s.trace.settings.get('memory', 'fits')}), "
        f"Frobenius blocks of {s.frobenius.settings['block_size']}; budget "
        f"{landscape.memory.default_budget() / 2**30:.1f} GiB",
    }


def run_report(workload: str) -> dict:
    """The HTML report (``landscape.report.analyse`` + ``write_report``) with light settings, every section but the
    batch-size scaling: spectrum (2 probes x 10 steps, top-3), a 5 x 5 surface, sharpness (SAM 2 steps, 4 average
    draws, 10 products for trace and norm), stability of SGD at lr 0.01 (full batch), roughness along 2 directions,
    block spectra of the coarse blocks (1 probe x 4 steps, k=1). Whether it runs within the budget, and its peak;
    each section's own peak RSS (``section_peaks_gib``: the kernel's high-water mark reset as the section starts,
    Linux only) and what the process holds after it (``section_rss_gib``)."""
    import tempfile

    from landscape.report import OptimizerSetting, analyse, collect_provenance, write_report
    from landscape.report import analyses as sections

    peaks: dict[str, float] = {}
    after: dict[str, float] = {}
    progress = RESULTS / f"report_sections_{workload}.jsonl"  # one line per finished section, kept if killed
    for name in ("spectrum", "surface", "sharpness", "block_spectra", "roughness_index", "_stability"):
        setattr(sections, name, _section_peak(getattr(sections, name), name, peaks, after, progress))
    p = problem(workload)
    t0 = time.perf_counter()
    result = analyse(
        p,
        optimizers=[OptimizerSetting("sgd", 0.01)],
        top_k=3,
        num_probes=2,
        num_steps=10,
        resolution=5,
        sam_steps=2,
        num_samples=4,
        num_matvecs=10,
        roughness_directions=2,
        blocks={"by": COARSE_BLOCKS[workload], "k": 1, "num_probes": 1, "num_steps": 4, "full": False, "traces": "slq"},
        seed=SEED,
    )
    with tempfile.TemporaryDirectory() as out:
        path = write_report(out, result, collect_provenance(p))
        size = path.stat().st_size
    return {
        "seconds": time.perf_counter() - t0,
        "eigenvalues": [float(x) for x in result.spectrum.eigenvalues],
        "note": f"report.html {size / 2**20:.1f} MiB; sections timed: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.wall_times.items()),
        "section_peaks_gib": peaks,
        "section_rss_gib": after,
        "peak_before_reset_gib": max(peaks.values(), default=0.0),
    }


def _status_gib(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process from ``/proc/self/status``, GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 2**30
    return math.nan


def _section_peak(fn, name: str, peaks: dict[str, float], after: dict[str, float], progress: Path):
    """``fn`` recording its own peak RSS into ``peaks[name]``: the high-water mark is reset to the current RSS
    (``/proc/self/clear_refs``: 5, which resets ``ru_maxrss`` too) as it starts and read as it ends; the peak before
    the reset is kept in ``peaks["before " + name]``."""

    def wrapped(*args, **kwargs):
        peaks["before " + name] = max(peaks.get("before " + name, 0.0), _status_gib("VmHWM"))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            peaks[name] = max(peaks.get(name, 0.0), _status_gib("VmHWM"))
            after[name] = _status_gib("VmRSS")
            line = {"time": time.strftime("%Y-%m-%d %H:%M"), "section": name, "seconds": time.perf_counter() - t0}
            with progress.open("a") as f:
                f.write(json.dumps({**line, "peak_gib": peaks[name], "held_gib": after[name]}) + "\n")

    return wrapped


def run_pyhessian(workload: str) -> dict:
    import pyhessian  # noqa: F401 - registers the module pyhessian.hessian (whose name the class shadows)

    ph = sys.modules["pyhessian.hessian"]

    model, X, y = supervised(workload)
    counted = {"n": 0}
    hvp = ph.hessian_vector_product

    def counting(*a, **kw):
        counted["n"] += 1
        return hvp(*a, **kw)

    ph.hessian_vector_product = counting
    t0 = time.perf_counter()
    h = ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
    eig, _ = h.eigenvalues(top_n=1)
    return {"seconds": time.perf_counter() - t0, "eigenvalues": [float(eig[0])], "products": counted["n"]}


class _PeerCap(Exception):
    """Raised inside a peer's product once its time cap is spent."""


def run_pyhessian_long(workload: str) -> dict:
    """PyHessian's power iteration run past its stop rule (``tol=0``) for ``PEER_CAP_S`` seconds (environment;
    ``--peer-cap``); each product's Rayleigh quotient ``v^T H v`` (the estimate its iteration reads) is recorded
    with the time it was ready. The algorithm is untouched: the wrapper only times and reads its products."""
    import pyhessian  # noqa: F401 - registers the module pyhessian.hessian (whose name the class shadows)

    ph = sys.modules["pyhessian.hessian"]
    cap = float(os.environ.get("PEER_CAP_S", "1700"))
    model, X, y = supervised(workload)
    trajectory: list[tuple[float, float]] = []
    hvp = ph.hessian_vector_product

    def recording(gradsH, params, v):
        if time.perf_counter() - t0 > cap:
            raise _PeerCap
        Hv = hvp(gradsH, params, v)
        rq = float(sum((h * x).sum() for h, x in zip(Hv, v, strict=True)))
        trajectory.append((time.perf_counter() - t0, rq))
        return Hv

    ph.hessian_vector_product = recording
    t0 = time.perf_counter()
    h = ph.hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
    try:
        h.eigenvalues(top_n=1, maxIter=100_000, tol=0.0)
    except _PeerCap:
        pass
    return {
        "seconds": trajectory[-1][0],
        "eigenvalues": [trajectory[-1][1]],
        "products": len(trajectory),
        "cap_s": cap,
        "trajectory": trajectory,
    }


def run_eigenthings(workload: str) -> dict:
    import hessian_eigenthings as he

    model, X, y = supervised(workload)
    op = he.HessianOperator(model, [(X, y)], he.supervised_loss(nn.CrossEntropyLoss()), full_dataset=True)
    t0 = time.perf_counter()
    r = he.lanczos(op, k=1, max_iter=20, which="LA", seed=SEED)
    return {"seconds": time.perf_counter() - t0, "eigenvalues": [float(r.eigenvalues[0])], "products": 20}


def run_curvlinops(workload: str) -> dict:
    import curvlinops
    from scipy.sparse.linalg import eigsh

    model, X, y = supervised(workload)
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    op = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(X, y)], check_deterministic=False)
    sp = op.to_scipy()
    counted = {"n": 0}
    matvec = sp.matvec

    def counting(x):
        counted["n"] += 1
        return matvec(x)

    sp.matvec = counting
    ev = eigsh(sp, k=1, which="LA", tol=1e-3, return_eigenvectors=False)
    return {"seconds": time.perf_counter() - t0, "eigenvalues": [float(ev[0])], "products": counted["n"]}


def run_one(workload: str, method: str) -> dict:
    torch.manual_seed(SEED)
    out = {"workload": workload, "method": method}
    try:
        out.update(globals()[f"run_{method}"](workload))
    except Exception as err:  # noqa: BLE001 - a failing method is a result (e.g. a peer's MemoryError)
        out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    # A method that reset the high-water mark (the report's sections) gives the peaks it saw before each reset.
    out["peak_gib"] = max(peak_rss(), out.pop("peak_before_reset_gib", 0.0))
    return out


# ---------------------------------------------------------------------------------------------------- driver
def relative_error(row: dict, refs: dict) -> float | None:
    ref = refs.get(row["workload"], {}).get("eigenvalue")
    if ref is None or not row.get("eigenvalues"):
        return None
    return abs(row["eigenvalues"][0] - ref) / abs(ref)


def table(rows: list[dict]) -> str:
    refs = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    lines = []
    for w in WORKLOADS:
        mine = [r for r in rows if r["workload"] == w]
        if not mine:
            continue
        grad = next((r for r in mine if r["method"] == "gradient" and "error" not in r), None)
        gs, gm = (grad["seconds"], grad["peak_gib"]) if grad else (math.nan, math.nan)
        lines += [
            f"\n{w}: gradient {gs:.2f} s, peak {gm:.2f} GiB",
            "",
            "| method | wall s | / gradient | peak GiB | / gradient | estimate GiB | products | top eig | rel. error "
            "| note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in mine:
            err = relative_error(r, refs)
            eig = (r.get("eigenvalues") or [None])[0]
            note = r.get("error", "")
            note = r.get("note", note) if not note else note
            ref = refs.get(w, {}).get("eigenvalue")
            if r.get("trajectory") and ref is not None:
                hit = next((t for t, x in r["trajectory"] if abs(x - ref) <= 1e-3 * abs(ref)), None)
                note = f"within 1e-3 after {hit:.0f} s" if hit is not None else f"not within 1e-3 in {r['cap_s']:.0f} s"
            if r["method"] == "hvp" and "first_s" in r:
                note = f"first {r['first_s']:.2f} s = {r['first_s'] / r['seconds']:.2f}x a later one; {r['chosen']}"
            lines.append(
                f"| {r['method']} | {r.get('seconds', math.nan):.2f} | {r.get('seconds', math.nan) / gs:.2f} | "
                f"{r['peak_gib']:.2f} | {r['peak_gib'] / gm:.2f} | {r.get('estimate_gib', math.nan):.2f} | "
                f"{r.get('products', '')} | {'' if eig is None else f'{eig:.6g}'} | "
                f"{'' if err is None else f'{err:.1e}'} | {note} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--methods", nargs="+", choices=ALL, default=list(ALL))
    ap.add_argument("--one", nargs=2, metavar=("WORKLOAD", "METHOD"), help="run one method here, print JSON")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_scale.jsonl", help="rows are appended here")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every method, interleaved (fresh processes)")
    ap.add_argument("--peer-cap", type=float, default=None, help="seconds for pyhessian_long (default 1700)")
    args = ap.parse_args()
    if args.peer_cap is not None:
        os.environ["PEER_CAP_S"] = str(args.peer_cap)
    if args.one:
        print(json.dumps(run_one(*args.one)), flush=True)
        return
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    rows = []
    args.out.parent.mkdir(exist_ok=True)
    rounds = [(w, m) for _ in range(args.repeat) for w in args.workloads for m in args.methods]
    for w, m in rounds:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", w, m], capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = {
                "workload": w,
                "method": m,
                "peak_gib": math.nan,
                "error": f"process exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
            }
        row["process_s"] = time.perf_counter() - t0
        rows.append(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
