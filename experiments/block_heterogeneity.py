"""Block heterogeneity of a CNN and a transformer on digits (Zhang et al. 2024, "Why Transformers Need Adam").

Zhang, Chen, Ding, Li, Sun, Luo ("Why Transformers Need Adam: A Hessian Perspective", NeurIPS 2024) split the
Hessian into its diagonal blocks, one per layer's parameter tensor group (a transformer's query, key, value, attention
output, MLP, LayerNorm and embedding blocks separately; a CNN's convolutions and BatchNorms), estimate each block's
spectral density by stochastic Lanczos quadrature, and measure *block heterogeneity* by the Jensen-Shannon
distances between those densities. They find the transformers' blocks far more heterogeneous than the CNNs' (at
initialisation and after training) and tie Adam's advantage on transformers to it. This script repeats that
measurement on CPU with :func:`landscape.block_spectra` (every block advanced together, one batched data pass per
Lanczos step; blocks of at most ``dense_max`` parameters built densely and diagonalised exactly).

Setting. scikit-learn's 8x8 digits (training split, 1,438 images, standardised), float32, one torch thread:

- CNN: :func:`landscape.models.small_resnet` with one input channel, width 16, two stages of one basic block each
  (BatchNorm; 19,706 parameters, 13 blocks), trained by SGD with momentum (lr 0.05, batches of 64, 300 steps),
  the usual recipe for a CNN;
- transformer: a Hugging Face ViT built from a ``ViTConfig`` (no download): each image is 16 patch tokens of 2x2
  pixels plus a CLS token, width 32, 2 layers of 4 heads, MLP 64, eager attention, a linear classification head
  on the CLS token (18,218 parameters, 20 blocks: per layer separate query, key, value, attention output, MLP in,
  MLP out and two LayerNorms, plus the patch embedding, the CLS/position embeddings, the final LayerNorm and the
  head), trained by Adam (lr 1e-3, batches of 64, 1,000 steps), the usual recipe for a transformer.

Both are seeded and trained to about 100% training accuracy (about 15 s of training together). Blocks are the
modules owning parameters (``by="module"``, with short names). For the initial and the trained weights of each
model, the Hessian of the mean cross-entropy on a fixed batch of the first 256 training images goes through
``block_spectra`` (3 Rademacher probes x 30 Lanczos steps per block, blocks of at most 64 parameters - the
BatchNorms and LayerNorms - exact, fixed engine ``double_backward`` with a loop over columns, so re-runs are
bit-identical), with the block-diagonal approximation compared to the full Hessian. The Jensen-Shannon distance is
landscape's (base 2, sqrt of the divergence Zhang et al. plot; 0 identical, 1 disjoint; the blocks' densities on one
common grid and smoothing width ``(max - min eigenvalue over all blocks) / num_steps``). That width follows the
widest block: one block with a large spread (here the trained ViT's patch embedding, top eigenvalue ~10^4) smooths
every other block into the same bump at zero, and their distances vanish. So the distances are also computed at the
fixed width of Zhang et al.'s code (``sigma = sqrt(1e-5)``, on a grid fine enough for it), and next to them a scale
measure that needs no width: the standard deviation over the blocks of ``log10 lambda_max(H_bb)``. Verdict, per
measure: Zhang et al.'s finding holds when the transformer's value exceeds the CNN's.

Run: python experiments/block_heterogeneity.py  ->  figures/block_heterogeneity.png and .pdf (per trained model: the
     distances at both widths and the densities), experiments/results/block_heterogeneity.json, markdown tables
     (about 6 minutes on a busy 2-core machine, one thread)
     python experiments/block_heterogeneity.py --smoke   (tiny models, seconds; figures and JSON into --out)
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _figure_files import begin, save_png_and_pdf  # noqa: E402
from torch import nn  # noqa: E402

from landscape import Problem, block_spectra, data, models, training  # noqa: E402
from landscape.blocks import heterogeneity, js_distance  # noqa: E402
from landscape.plot.blocks import block_spectra_plot  # noqa: E402

NAME = "block_heterogeneity"
OUT = Path(__file__).resolve().parent.parent / "figures"
RESULTS = Path(__file__).resolve().parent / "results"
FULL = {
    "cnn_width": 16,
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
    "train_steps": {"CNN": 300, "ViT": 1000},
    "hessian_samples": 256,
    "num_probes": 3,
    "num_steps": 30,
    "dense_max": 64,
    "k": 3,
}
SMOKE = (
    FULL
    | {
        "cnn_width": 4,
        "vit": {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16},
        "train_steps": {"CNN": 20, "ViT": 20},
    }
    | {"hessian_samples": 32, "num_probes": 2, "num_steps": 8, "dense_max": 16, "k": 2}
)
# The ViT's input (8x8 images of one channel, 2x2 patches, 10 classes); no dropout, eager (double-differentiable).
VIT_INPUT = {"image_size": 8, "patch_size": 2, "num_channels": 1, "num_labels": 10}
VIT_PLAIN = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "attn_implementation": "eager"}
# Zhang et al.'s smoothing width (their code's ``sigma = 1e-5 ** 0.5``): the distances again at this fixed width.
ZHANG_SIGMA = 1e-5**0.5
RECIPES = {"CNN": {"optimizer": "sgd", "lr": 0.05}, "ViT": {"optimizer": "adam", "lr": 1e-3}}
# Module names -> short block names, for the tables and the figure. A ViT layer's parts under both transformers
# namings (``encoder.layer.i.attention.attention.query`` ... before 5.0, ``layers.i.attention.q_proj`` ... since).
LAYER = re.compile(r"^vit\.(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
PARTS = {
    "attention.attention.query": "query",
    "attention.q_proj": "query",
    "attention.attention.key": "key",
    "attention.k_proj": "key",
    "attention.attention.value": "value",
    "attention.v_proj": "value",
    "attention.output.dense": "attn_out",
    "attention.o_proj": "attn_out",
    "intermediate.dense": "mlp_in",
    "mlp.fc1": "mlp_in",
    "output.dense": "mlp_out",
    "mlp.fc2": "mlp_out",
    "layernorm_before": "ln1",
    "layernorm_after": "ln2",
}
OTHERS = {
    "vit.embeddings": "cls+pos",
    "vit.embeddings.patch_embeddings.projection": "patch",
    "vit.layernorm": "ln_f",
    "classifier": "head",
    "0.0": "stem.conv",
    "0.1": "stem.bn",
}


def short(module: str, last: str) -> str:
    """The short name of a module (``last``: the name of the model's last module, the linear head)."""
    layer = LAYER.match(module)
    if layer and layer.group(2) in PARTS:
        return f"{layer.group(1)}.{PARTS[layer.group(2)]}"
    if module == last:
        return "head"
    return OTHERS.get(module, module.replace("shortcut.0", "short.conv").replace("shortcut.1", "short.bn"))


def module_blocks(model: nn.Module) -> dict[str, list[str]]:
    """``by="module"`` with short names: ``{short module name: its parameters' names}`` in parameter order."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = [n.rsplit(".", 1)[0] if "." in n else "" for n in names]
    blocks: dict[str, list[str]] = {}
    for name, owner in zip(names, owners, strict=True):
        blocks.setdefault(short(owner, owners[-1]), []).append(name)
    return blocks


def build_vit(cfg: dict, seed: int) -> nn.Module:
    """The ViT of the module docstring, returning logits (so a plain criterion and ``training.train`` apply)."""
    import transformers

    transformers.logging.set_verbosity_error()

    class ViTLogits(transformers.ViTForImageClassification):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(pixel_values=x).logits

    config = transformers.ViTConfig(**VIT_INPUT, **VIT_PLAIN, **cfg["vit"])
    # transformers initialises from the global generator: seed it inside fork_rng, the caller's state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTLogits(config).eval()


def build(name: str, cfg: dict, seed: int) -> nn.Module:
    if name == "CNN":
        return models.small_resnet(1, 10, width=cfg["cnn_width"], num_blocks=1, stages=2, seed=seed).eval()
    return build_vit(cfg, seed)


@torch.no_grad()
def full_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy over all of ``(X, y)`` (the model in eval mode)."""
    return float(nn.functional.cross_entropy(model(X), y))


def analyse(model: nn.Module, X: torch.Tensor, y: torch.Tensor, cfg: dict, seed: int):
    problem = Problem(model, nn.CrossEntropyLoss(), (X, y))
    return block_spectra(
        problem,
        by=module_blocks(model),
        k=cfg["k"],
        num_probes=cfg["num_probes"],
        num_steps=cfg["num_steps"],
        dense_max=cfg["dense_max"],
        engine="double_backward",
        block="loop",
        seed=seed,
    )


def at_fixed_width(result, sigma: float = ZHANG_SIGMA) -> np.ndarray:
    """``(B, B)`` Jensen-Shannon distances of the blocks' densities smoothed at one fixed ``sigma``.

    A uniform grid cannot resolve a width of 0.003 over a support of 10^4, so the densities are evaluated on the union
    of fine grids around every Ritz node (41 points over +-5 sigma each), each point weighted by its cell width."""
    densities = [result.spectra[n].density for n in result.names]
    nodes = np.concatenate([d.nodes.ravel() for d in densities])
    offsets = np.linspace(-5 * sigma, 5 * sigma, 41)
    grid = np.unique(np.round((nodes[:, None] + offsets[None, :]).ravel() / (sigma / 8)) * (sigma / 8))
    cells = np.gradient(grid) if grid.size > 1 else np.ones(1)
    mass = [np.maximum(d.density(grid, sigma) * cells, 0.0) for d in densities]
    B = len(densities)
    D = np.zeros((B, B))
    for i in range(B):
        for j in range(i + 1, B):
            D[i, j] = D[j, i] = js_distance(mass[i], mass[j])
    return D


def upper(D: np.ndarray) -> np.ndarray:
    return D[np.triu_indices(len(D), k=1)]


def log_spread(result) -> float:
    """Standard deviation over the blocks of log10 of their top eigenvalue (|.|, floored at 1e-12): how many decades
    the blocks' curvature scales span, the heterogeneity that matters for one learning rate for all blocks."""
    return float(np.std(np.log10(np.maximum(np.abs(result.lambda_max), 1e-12))))


def overview(runs: list[dict]) -> str:
    lines = [
        "| model | weights | params | blocks | train loss | train acc | JS mean | JS max | most different pair "
        f"| JS mean, sigma {ZHANG_SIGMA:.2g} | JS max, sigma {ZHANG_SIGMA:.2g} | std log10 lambda_max(H_bb) "
        "| lambda_max H | max_b lambda_max H_bb | off-diagonal share of frobenius(H)^2 | data passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r, h, z = run["result"], run["result"].heterogeneity, run["fixed_width"]
        a, b, _ = h.most_different
        f = r.full
        lines.append(
            f"| {run['model']} | {run['weights']} | {r.num_params} | {len(r.names)} | {run['loss']:.4f} "
            f"| {run['accuracy']:.4f} | {h.mean:.4f} | {h.max:.4f} | {a} vs {b} | {upper(z).mean():.4f} "
            f"| {upper(z).max():.4f} | {log_spread(r):.2f} | {f.lambda_max_full:.5g} "
            f"| {f.lambda_max_blocks:.5g} | {f.off_diagonal_share:.3f} | {r.passes} |"
        )
    return "\n".join(lines)


def per_block(run: dict) -> str:
    r = run["result"]
    lines = [
        f"\n{run['model']} ({run['weights']}): per block",
        "",
        "| block | params | lambda_max | trace | trace method | frobenius(H_bb) | mean JS to the others |",
        "|---|---|---|---|---|---|---|",
    ]
    mean_js = r.heterogeneity.distances.sum(axis=1) / (len(r.names) - 1)
    cells = zip(r.names, r.sizes, r.lambda_max, r.traces, r.trace_methods, r.frobenius, mean_js, strict=True)
    lines += [
        "| " + " | ".join([n, str(p), f"{lam:.5g}", f"{t:.5g}", m, f"{f:.5g}", f"{j:.4f}"]) + " |"
        for n, p, lam, t, m, f, j in cells
    ]
    return "\n".join(lines)


def at_resolution(result) -> float:
    """Mean distance with ``sigma="resolution"`` (the Lanczos resolution of the widest support)."""
    densities = [result.spectra[n].density for n in result.names]
    return heterogeneity(result.names, densities, sigma="resolution").mean


MEASURES = (
    ("JS mean, landscape's default (Zhang et al.'s width, uniform grid)", lambda run: run["result"].heterogeneity.mean),
    ("JS mean, Lanczos-resolution width (range / num_steps)", lambda run: at_resolution(run["result"])),
    (
        f"JS mean, fixed width {ZHANG_SIGMA:.2g} (Zhang et al.'s; this script's own grid around the nodes)",
        lambda run: float(upper(run["fixed_width"]).mean()),
    ),
    ("std over blocks of log10 lambda_max(H_bb)", lambda run: log_spread(run["result"])),
)


def verdicts(runs: list[dict]) -> list[dict]:
    """Per measure and weights: the CNN's and the ViT's value and whether the ViT's is larger (Zhang et al.)."""
    value = {(label, run["model"], run["weights"]): f(run) for label, f in MEASURES for run in runs}
    return [
        {
            "measure": label,
            "weights": weights,
            "CNN": value[label, "CNN", weights],
            "ViT": value[label, "ViT", weights],
            "agrees": bool(value[label, "ViT", weights] > value[label, "CNN", weights]),
        }
        for label, _ in MEASURES
        for weights in ("initial", "trained")
    ]


def verdict_table(rows: list[dict]) -> str:
    lines = [
        "| heterogeneity measure | weights | CNN | ViT | ViT / CNN | ViT more heterogeneous (Zhang et al.) |",
        "|---|---|---|---|---|---|",
    ]
    for v in rows:
        ratio = v["ViT"] / v["CNN"] if v["CNN"] else math.inf
        lines.append(
            f"| {v['measure']} | {v['weights']} | {v['CNN']:.4f} | {v['ViT']:.4f} | {ratio:.2f} "
            f"| {'agrees' if v['agrees'] else 'does not agree'} |"
        )
    return "\n".join(lines)


def summarise(rows: list[dict]) -> str:
    trained = [v for v in rows if v["weights"] == "trained"]
    yes = [v["measure"] for v in trained if v["agrees"]]
    no = [v["measure"] for v in trained if not v["agrees"]]
    return (
        f"trained models: the ViT is more heterogeneous than the CNN by {len(yes)} of {len(trained)} measures"
        + (f" (agrees: {'; '.join(yes)})" if yes else "")
        + (f" (does not agree: {'; '.join(no)})" if no else "")
    )


def figure(runs: list[dict], out: Path, start: float) -> None:
    """Per trained model: the distances at landscape's width, the densities, and the distances at the fixed width."""
    trained = [run for run in runs if run["weights"] == "trained"]
    fig, axes = plt.subplots(
        len(trained), 3, figsize=(22, 7.2 * len(trained)), gridspec_kw={"width_ratios": [1.15, 1, 1.15]}
    )
    for row, run in zip(np.atleast_2d(axes), trained, strict=True):
        r, name = run["result"], run["model"]
        r.plot("heatmap", row[0])
        row[0].set_title(
            f"{name} (trained, {r.num_params:,} params): Jensen-Shannon distances\nat landscape's width "
            f"{r.heterogeneity.sigma:.3g}: mean {r.heterogeneity.mean:.3f}, max {r.heterogeneity.max:.3f}",
            fontsize=10,
        )
        r.plot("ridge", row[1], title=f"{name}: block densities (log scale), top eigenvalues dashed")
        # The heatmap is duck-typed: the same drawing for the distances at Zhang et al.'s fixed width.
        D = run["fixed_width"]
        fixed = SimpleNamespace(names=r.names, heterogeneity=SimpleNamespace(distances=D, mean=0.0, max=0.0))
        block_spectra_plot(fixed, "heatmap", row[2])
        row[2].set_title(
            f"{name}: distances at the fixed width {ZHANG_SIGMA:.2g} (Zhang et al.'s)\n"
            f"mean {upper(D).mean():.3f}, max {upper(D).max():.3f}",
            fontsize=10,
        )
    fig.tight_layout()
    save_png_and_pdf(fig, out, NAME, start)


def main(argv: list[str] | None = None) -> None:
    args, cfg, start = begin(__doc__, OUT, FULL, SMOKE, argv, seed_help="seed of the initialisation, batches, probes")
    X, y = data.digits(split="train", flatten=False, seed=0)
    Xh, yh = X[: cfg["hessian_samples"]], y[: cfg["hessian_samples"]]
    runs = []
    for name, recipe in RECIPES.items():
        model = build(name, cfg, args.seed)
        for weights in ("initial", "trained"):
            if weights == "trained":
                steps = cfg["train_steps"][name]
                training.train(model, X, y, steps=steps, batch_size=64, momentum=0.9, seed=args.seed, **recipe)
                model.eval()
            t0 = time.perf_counter()
            result = analyse(model, Xh, yh, cfg, args.seed)
            runs.append(
                {
                    "model": name,
                    "weights": weights,
                    "loss": full_loss(model, X, y),
                    "accuracy": training.accuracy(model, X, y),
                    "result": result,
                    "fixed_width": at_fixed_width(result),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(f"{name} {weights}: block_spectra in {runs[-1]['seconds']:.0f} s", flush=True)
    print(
        f"\nHessian block spectra (Zhang et al. 2024) of a CNN and a ViT on digits: {cfg['num_probes']} probes x "
        f"{cfg['num_steps']} Lanczos steps per block, blocks <= {cfg['dense_max']} params exact, Hessian on "
        f"{cfg['hessian_samples']} training images, training steps {cfg['train_steps']}, seed {args.seed}; JS = "
        "Jensen-Shannon distance (base 2, 0 identical, 1 disjoint)\n"
    )
    print(overview(runs))
    for run in runs:
        if run["weights"] == "trained":
            print(per_block(run))
    print("\n" + verdict_table(verdicts(runs)))
    summary = summarise(verdicts(runs))
    print(f"\nverdict: {summary}")
    record = {
        "experiment": "block heterogeneity, Zhang et al. 2024, digits",
        "config": cfg,
        "seed": args.seed,
        "recipes": RECIPES,
        "verdict": summary,
        "comparisons": verdicts(runs),
        "runs": [
            {k: v for k, v in run.items() if k not in ("result", "fixed_width")}
            | {
                "block_spectra": run["result"].to_dict(),
                "js_fixed_width": {"sigma": ZHANG_SIGMA, "distances": run["fixed_width"].tolist()},
                "log10_lambda_max_std": log_spread(run["result"]),
            }
            for run in runs
        ],
    }
    json_dir = RESULTS if args.out == OUT and not args.smoke else args.out
    json_dir.mkdir(parents=True, exist_ok=True)
    (json_dir / f"{NAME}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {json_dir / f'{NAME}.json'}")
    figure(runs, args.out, start)


if __name__ == "__main__":
    main()
