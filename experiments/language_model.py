"""A small byte-level GPT-2 trained on the Python standard library's own source, then analysed from the command line.

Setting. Text that ships on every machine: a fixed list of the standard library's source files (from
``os.path.dirname(os.__file__)``), read as bytes; every byte is a token (vocabulary 256). The files
``heapq.py``, ``string.py`` and ``textwrap.py`` are held out as the evaluation set, the others are the training
text. A ``transformers.GPT2Config`` model (4 layers, width 160, 5 heads, context 128, no dropout, default sdpa
attention: about 1.3M parameters) is initialised from a fixed seed and trained by AdamW (lr 3e-3, linear warm-up,
cosine decay, gradient clipping at 1) for 500 steps on random windows of 64 bytes, 32 per step, drawn from a local
generator. Train and eval losses (nats per byte) are printed as it goes.

Then, as a user would:

- ``model.save_pretrained(OUT/gpt2-stdlib)`` and ``OUT/tokens.pt``: 16 evaluation sequences of 64 bytes, int64
  ``(16, 64)``, spread evenly over the held-out files;
- the Python API on them (``checkpoint.load_hf``, ``Problem`` with ``losses.causal_lm``): the exact token-mean
  loss, which must equal the eval loss of the training loop on those sequences;
- ``landscape eigen``, ``trace``, ``density``, ``surface``, ``sharpness`` and ``report`` with ``--hf`` and
  ``--data tokens.pt``, run in ``OUT`` by subprocess, each command printed with its output and wall time; results
  in ``OUT/analysis`` (cached in its ``landscape.h5``: a second run answers from it), each with one torch thread
  (``--threads``). The density and surface figures are copied to ``figures/gpt2_stdlib_{density,surface}.png``.

Run: python experiments/language_model.py [--out DIR] [--steps N]   (10 minutes on 2 shared CPU cores: 2.6 of training,
15-60 s for each analysis, 4 for the report; ``--quick``: a 2-layer width-32 model, 20 steps, 16 x 32 tokens and no
figures copied, under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
STDLIB = Path(os.path.dirname(os.__file__))
# Present (as plain files) in Python 3.10 to 3.13; pathlib and zipfile became packages and are left out.
TRAIN_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "collections/__init__.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "datetime.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "gzip.py",
    "inspect.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "pprint.py",
    "random.py",
    "shutil.py",
    "statistics.py",
    "subprocess.py",
    "tarfile.py",
    "threading.py",
    "typing.py",
)
EVAL_FILES = ("heapq.py", "string.py", "textwrap.py")
BOS = 0  # NUL never occurs in the source files; it names the sequence boundary inside the byte vocabulary


@dataclasses.dataclass(frozen=True)
class Config:
    n_layer: int
    n_embd: int
    n_head: int
    steps: int
    batch: int  # training windows per step
    seq_len: int  # tokens per sequence, training and analysis
    lr: float
    eval_seqs: int  # held-out sequences for the printed eval loss
    token_seqs: int  # sequences in tokens.pt
    analysis_batch: int  # --batch-size of the CLI analyses
    cli: dict[str, tuple[str, ...]]  # each command's own options


FULL = Config(
    n_layer=4,
    n_embd=160,
    n_head=5,
    steps=500,
    batch=32,
    seq_len=64,
    lr=3e-3,
    eval_seqs=256,
    token_seqs=16,
    analysis_batch=8,
    cli={
        "eigen": ("--top-k", "3"),
        "trace": (),
        "density": (),
        "surface": ("--resolution", "11"),
        "sharpness": (),
        # n = 16 sequences: the scaling's batch sizes and the SGD check's batch must lie below it
        "report": ("--top-k", "3", "--probes", "4", "--steps", "30", "--resolution", "11", "--batch-sizes", "4,8")
        + ("--sgd-batch-size", "8"),
    },
)
QUICK = Config(
    n_layer=2,
    n_embd=32,
    n_head=2,
    steps=20,
    batch=8,
    seq_len=32,
    lr=3e-3,
    eval_seqs=64,
    token_seqs=16,
    analysis_batch=8,
    cli={
        "eigen": ("--top-k", "2"),
        "trace": ("--num-matvecs", "12"),
        "density": ("--probes", "2", "--steps", "8"),
        "surface": ("--resolution", "5"),
        "sharpness": ("--num-matvecs", "8", "--steps", "2", "--num-samples", "3"),
        "report": ("--top-k", "2", "--probes", "2", "--steps", "8", "--resolution", "5", "--batch-sizes", "4")
        + ("--sgd-batch-size", "4", "--optimizer", "sgd", "--num-batches", "2"),
    },
)


def read_bytes(names: tuple[str, ...]) -> torch.Tensor:
    """The files' bytes, concatenated, as int64 token ids; a file this Python lacks is skipped (and named)."""
    parts, missing = [], []
    for name in names:
        path = STDLIB / name
        if path.is_file():
            parts.append(path.read_bytes())
        else:
            missing.append(name)
    if missing:
        print(f"note: not in this Python's standard library, skipped: {', '.join(missing)}")
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()


def build_model(cfg: Config, seed: int):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=max(128, cfg.seq_len),
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS,
        eos_token_id=BOS,
    )
    # The initialisation draws from the global generator: seed it inside fork_rng so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(config)


def next_byte_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats) over all positions of ``ids`` (N, T): what losses.causal_lm computes."""
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@torch.no_grad()
def eval_loss(model, ids: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    total = sum(next_byte_loss(model, chunk).item() * len(chunk) for chunk in ids.split(batch))
    model.train()
    return total / len(ids)


def evenly_spaced(chunks: torch.Tensor, n: int) -> torch.Tensor:
    if n > len(chunks):
        raise ValueError(f"the held-out files give {len(chunks)} sequences, fewer than the {n} asked for")
    return chunks[torch.linspace(0, len(chunks) - 1, n).round().long()]


def train(cfg: Config, seed: int):
    train_ids = read_bytes(TRAIN_FILES)
    eval_stream = read_bytes(EVAL_FILES)
    chunks = eval_stream[: len(eval_stream) // cfg.seq_len * cfg.seq_len].reshape(-1, cfg.seq_len)
    eval_ids, tokens = evenly_spaced(chunks, cfg.eval_seqs), evenly_spaced(chunks, cfg.token_seqs)
    print(
        f"text: {len(TRAIN_FILES)} standard-library files, {len(train_ids):,} bytes for training; "
        f"{len(EVAL_FILES)} held out ({len(eval_stream):,} bytes), {len(eval_ids)} x {cfg.seq_len} for evaluation"
    )

    model = build_model(cfg, seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: GPT-2, {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, vocabulary 256 bytes, "
        f"{n_params:,} parameters, attention {model.config._attn_implementation}"
    )
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, cfg.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    g = torch.Generator().manual_seed(seed)
    every = max(1, cfg.steps // 6)
    print(f"training: AdamW, {cfg.steps} steps of {cfg.batch} x {cfg.seq_len} bytes, seed {seed}")
    print(f"  step {0:4d}: eval loss {eval_loss(model, eval_ids):.4f}")
    start, recent = time.perf_counter(), []
    model.train()
    for step in range(cfg.steps):
        starts = torch.randint(0, len(train_ids) - cfg.seq_len, (cfg.batch,), generator=g)
        batch = torch.stack([train_ids[s : s + cfg.seq_len] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = next_byte_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            print(
                f"  step {step + 1:4d}: train loss {sum(recent) / len(recent):.4f} (mean of the last {len(recent)} "
                f"steps), eval loss {eval_loss(model, eval_ids):.4f}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
            recent = []
    model.eval()
    final = {"train": eval_loss(model, batch), "eval": eval_loss(model, eval_ids), "tokens": eval_loss(model, tokens)}
    return model, tokens, final, time.perf_counter() - start


def python_api(model_dir: Path, token_file: Path, batch_size: int) -> float:
    """The saved model and tokens through the Python API: the full-data token-mean loss."""
    import landscape as L
    from landscape import data
    from landscape.checkpoint import load_hf

    model = load_hf(model_dir)
    ids = data.load_tokens(token_file)
    batches = data.token_batches(ids, batch_size)
    problem = L.Problem(model, L.losses.causal_lm(), batches)
    info = model.landscape_load_info
    loss = float(problem.loss())
    print(
        f"python: load_hf -> {info.model_class} ({info.weights}, {str(info.dtype).replace('torch.', '')}, "
        f"attention {info.attn_implementation}); Problem(model, losses.causal_lm(), {len(batches)} batches "
        f"of tokens {tuple(ids.shape)}).loss() = {loss:.6f}"
    )
    return loss


def cli(args: list[str], cwd: Path, threads: int) -> float:
    """Run ``landscape ARGS`` in ``cwd`` as a user would type it; print the command, its output and wall time."""
    print(f"\n$ OMP_NUM_THREADS={threads} landscape {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    # transformers' own "Loading weights" bar is drawn even when stderr is not a terminal
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-m", "landscape", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    print(proc.stdout.rstrip())
    print(f"[exit {proc.returncode}, {wall:.1f} s wall]", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"landscape {args[0]} failed with exit code {proc.returncode}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("landscape-out/language_model"), help="output directory")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 500; --quick 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 20 steps: a smoke test")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, here and in the CLI runs (default 1: on a shared machine two threads spin-waiting for "
        "a core another process holds made the same analysis 3-30x slower)",
    )
    ap.add_argument(
        "--figures", type=Path, default=None, help="where the figures are copied (default figures/; --quick: nowhere)"
    )
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    for name in ("steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    figures = args.figures if args.figures is not None else (None if args.quick else FIGURES)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model, tokens, final, train_s = train(cfg, args.seed)
    model_dir, token_file = out / "gpt2-stdlib", out / "tokens.pt"
    model.save_pretrained(model_dir)
    torch.save(tokens.clone(), token_file)
    print(
        f"trained in {train_s:.1f} s: final train loss {final['train']:.4f} (last batch), eval loss "
        f"{final['eval']:.4f} ({final['eval'] / math.log(2):.3f} bits per byte), {final['tokens']:.6f} on tokens.pt"
    )
    print(f"saved {model_dir} and {token_file} (int64 {tuple(tokens.shape)})")

    loss = python_api(model_dir, token_file, cfg.analysis_batch)
    if not math.isclose(loss, final["tokens"], rel_tol=1e-4):
        raise SystemExit(f"the Python API's loss {loss} differs from the training loop's {final['tokens']}")

    common = ["--hf", model_dir.name, "--data", token_file.name, "--batch-size", str(cfg.analysis_batch)]
    common += ["--out", "analysis"]
    walls = {name: cli([name, *common, *extra], out, args.threads) for name, extra in cfg.cli.items()}
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for name in ("density", "surface"):
            shutil.copyfile(out / "analysis" / f"{name}.png", figures / f"gpt2_stdlib_{name}.png")
        print(f"\nfigures: {figures}/gpt2_stdlib_density.png, gpt2_stdlib_surface.png")
    print(
        "\ncommand wall times: " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()),
        f"\ntotal {time.perf_counter() - t0:.0f} s; results in {out / 'analysis'}",
    )


if __name__ == "__main__":
    main()
