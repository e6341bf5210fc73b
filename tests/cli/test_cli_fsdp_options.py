"""``--fsdp`` and ``--products`` refuse what they cannot do with a message naming the fix (one process: no torchrun).
The sharded runs themselves are in ``tests/distributed/test_cli_commands_distributed.py``."""

from __future__ import annotations

from click.testing import CliRunner

from landscape.cli import main

QUICK = ("--data", "synthetic", "--batch-size", "200", "--quiet")


def _fails(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, *QUICK])
    assert result.exit_code != 0
    return result.output


def test_fsdp_needs_torchrun(tmp_path):
    out = _fails("eigen", "--fsdp", "--out", str(tmp_path))
    assert "--fsdp shards the model over the ranks of torchrun" in out and "torchrun --nproc-per-node 2" in out


def test_fsdp_is_for_the_spectral_commands(tmp_path):
    out = _fails("surface", "--fsdp", "--out", str(tmp_path))
    assert "'surface' does not run on sharded models" in out and "spectrum" in out


def test_finite_difference_products_need_fsdp(tmp_path):
    out = _fails("eigen", "--products", "finite-difference", "--out", str(tmp_path))
    assert "--products finite-difference needs --fsdp" in out
