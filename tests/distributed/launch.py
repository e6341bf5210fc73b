"""Start ``world_size`` ranks of ``worker.py`` as torchrun would (``RANK``, ``WORLD_SIZE``, ``MASTER_PORT``, ...)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    returncodes: tuple[int, ...]
    outputs: tuple[str, ...]
    wall_time: float
    ended: tuple[float, ...]


def launch(
    world_size: int,
    scenario: str,
    out: Path,
    *args: str,
    timeout: float = 60.0,
    dist_timeout: float = 20.0,
    grace: float | None = None,
) -> Launch:
    """Run the ranks to completion (or kill them all after ``timeout`` seconds); their exit codes and logs.

    ``ended[r]``: seconds until rank ``r`` was seen to end (waited for in rank order, so exact for rank 0). With
    ``grace``, ranks still running ``grace`` seconds after rank 0 ended are killed.
    """
    port = free_port()
    procs = []
    logs = []
    start = time.perf_counter()
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "LANDSCAPE_DIST_TIMEOUT": str(dist_timeout),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        log = open(out / f"log{rank}.txt", "w")  # noqa: SIM115 (closed below, after the process ends)
        logs.append(log)
        cmd = [sys.executable, str(WORKER), scenario, str(out), *args]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    deadline = start + timeout
    ended = []
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            pass
        ended.append(time.perf_counter() - start)
        if grace is not None:  # once rank 0 is done, the others get ``grace`` seconds to end before being killed
            deadline = min(deadline, time.perf_counter() + grace)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    wall = time.perf_counter() - start
    for log in logs:
        log.close()
    texts = tuple((out / f"log{rank}.txt").read_text() for rank in range(world_size))
    return Launch(tuple(p.returncode for p in procs), texts, wall, tuple(ended))
