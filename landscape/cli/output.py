"""What a command prints and writes: its result answered from the cache ``--out/landscape.h5`` when this exact run
was done before (:func:`landscape.store.remember`, keyed by content, never by file names), an explanation on stderr
when the cache holds other runs' results, ``COMMAND.json`` and the one-screen summary (``--json``: the JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
from torch import nn

from landscape._json import jsonable
from landscape.cli.app import CACHE_FILE
from landscape.store import ORDER_FREE_ANALYSES, Codec, remember


def state_sha(model: nn.Module) -> str:
    """The content hash of a model's weights and buffers (:func:`landscape.cache.content_key` of its state dict)."""
    from landscape.cache import content_key

    return content_key(params=dict(model.state_dict()), data_fingerprint="", config={}, version="")


def _identity(problem) -> dict[str, str]:
    """Short fingerprints saying whose result an entry is: architecture, weights (with buffers) and data (of a
    sharded model: of its per-tensor digests, :meth:`Problem.key_state`)."""
    from landscape.cache import content_key

    return {
        "architecture": hashlib.sha256(repr(problem.model).encode()).hexdigest()[:16],
        "parameters": (
            state_sha(problem.model)
            if problem.space is None
            else content_key(params=problem.key_state(), data_fingerprint="", config={}, version="")
        )[:16],
        "data": problem.data_fingerprint()[:16],
    }


@contextlib.contextmanager
def opened_store(out: Path, no_cache: bool) -> Iterator[Any]:
    """The result cache ``out/landscape.h5`` (held, with its write lock, for the whole command), or ``None``."""
    if no_cache:
        yield None
        return
    from landscape.cache import Cache

    with Cache(out / CACHE_FILE) as store:
        yield store


def _mismatches(store: Any, kind: str, key: str, identity: dict[str, str], config: dict[str, Any]) -> list[str]:
    """One phrase per other stored ``kind`` result: its key and why it does not answer this run."""
    phrases = []
    labels = {"architecture": "another architecture", "parameters": "other weights", "data": "other data"}
    for other, attrs in store.attributes(kind).items():
        if other == key:
            continue
        theirs, stored = attrs.get("identity", {}), attrs.get("config", {})
        why = [label for what, label in labels.items() if theirs.get(what) != identity[what]]
        if not why:
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            why = [
                "other settings (" + ", ".join(f"{k} {stored.get(k)!r} vs {config.get(k)!r}" for k in changed[:4]) + ")"
                if changed
                else "another loss, mode, dtype or parameter selection"
            ]
        phrases.append(f"{other[:12]} created {attrs.get('created', '?')}: {', '.join(why)}")
    return phrases


def answer(
    store: Any, problem: Any, name: str, config: dict[str, Any], compute: Callable[[], tuple[dict, str]]
) -> tuple[dict[str, Any], str, bool]:
    """``(result, summary, from_cache)``: the stored answer of this exact run, or ``compute()`` stored for next time.

    The entry (kind ``cli-<name>``) holds the JSON result and the summary; its attributes say whose result it is
    (:func:`_identity`) and the settings, so that a stored result that does not match this run is explained on stderr
    instead of silently ignored.
    """
    kind = f"cli-{name}"
    identity = _identity(problem) if store is not None else {}

    def notice(store: Any, key: str) -> None:
        phrases = _mismatches(store, kind, key, identity, config)
        if phrases:
            click.echo(
                f"note: {os.path.relpath(store.path)} holds {len(phrases)} earlier {name} result(s) that "
                f"do not match this run ({'; '.join(phrases[:3])}{'; ...' if len(phrases) > 3 else ''}): they are "
                "kept, and this result is computed and stored beside them",
                err=True,
            )

    def encode(answered: tuple[dict, str]) -> tuple[dict, dict]:
        text = json.dumps({"result": answered[0], "summary": answered[1]}, default=jsonable)
        return {"payload": np.frombuffer(text.encode(), dtype=np.uint8)}, {}

    def decode(arrays: dict, attrs: dict) -> tuple[dict, str]:
        payload = json.loads(arrays["payload"].tobytes().decode())
        return payload["result"], payload["summary"]

    # Results of the full-data loss alone are shared by any sharding and batching (landscape.cache.key_for).
    (result, summary), hit = remember(
        store,
        problem,
        kind,
        config,
        compute,
        codec=Codec(encode, decode),
        order_free=name in ORDER_FREE_ANALYSES and not config.get("subsets"),
        attrs={"identity": identity, "config": config},
        on_miss=notice,
    )
    return result, summary, hit


def marked(store: Any, problem: Any, name: str, config: dict[str, Any], run: Callable[[], Any]) -> tuple[Any, bool]:
    """``(run(), from_cache)`` for a command whose result the analysis caches itself (spectrum, surface): a marker
    entry under the command's key records that this run was done, so that a later run with other settings is told
    what ``--out`` holds (:func:`answer`), and a repeated run says it came from the cache."""
    done = []

    def compute() -> tuple[dict, str]:
        done.append(run())
        return {name: True}, ""

    _, _, hit = answer(store, problem, name, config, compute)
    return (done[0] if done else run()), hit  # a hit: the analysis's own cache entry answers run()


def answer_and_emit(
    problem: Any,
    name: str,
    config: dict[str, Any],
    compute: Callable[[], tuple[dict, str]],
    *,
    out: Path,
    no_cache: bool,
    as_json: bool,
    t0: float,
) -> None:
    """The body of a command without figures: :func:`answer` from ``out/landscape.h5``, then :func:`emit`."""
    out.mkdir(parents=True, exist_ok=True)
    with opened_store(out, no_cache) as store:
        result, summary, hit = answer(store, problem, name, config, compute)
        emit(result, summary, as_json, out, name, hit, t0, store)


def emit(
    result: dict, summary: str, as_json: bool, out: Path, name: str, from_cache: bool, t0: float, store: Any
) -> None:
    """Write ``out/<name>.json`` and print the JSON (``as_json``) or the summary, with where the result came from and
    how long the command took since ``t0``."""
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "from_cache": from_cache}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=jsonable))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=jsonable))
        return
    elapsed = time.perf_counter() - t0
    if from_cache:
        summary += (
            f"\nanswered from the cache {out / CACHE_FILE} in {elapsed:.1f} s (pass --no-cache, or delete the file, to "
            "recompute)"
        )
    else:
        summary += f"\nresults: {out / (name + '.json')}" + (f", cache {out / CACHE_FILE}" if store is not None else "")
        summary += f" ({elapsed:.1f} s in all)"
    click.echo(summary)
