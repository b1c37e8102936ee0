"""Start-up: `pgdr --version` exists, and `--help`/`--version` load none of the heavy
libraries a command needs only once it runs (their import time is what start-up costs)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("psycopg", "pydantic", "fastapi", "httpx", "rich", "hashlib", "concurrent", "tomllib")


def _imported_by(*args: str) -> set[str]:
    """Top-level modules a fresh `python -m pgdr ARGS` imports (from -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgdr", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "pgdr" in names  # the parse saw the imports at all
    return names


def test_version_prints_the_packaged_version_and_exits_0() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pgdr {declared}"
    # eager: answered even with a command after it, and nothing of the command ran
    with_command = run_cli("--version", "status", config=Path("/nonexistent/pgdr.toml"))
    assert with_command.returncode == 0 and with_command.stdout.strip() == f"pgdr {declared}"


def test_help_and_version_import_no_heavy_library() -> None:
    for args in (("--help",), ("--version",)):
        loaded = _imported_by(*args) & set(HEAVY)
        assert loaded == set(), (args, loaded)
    # a command's own help: Typer builds its parameters with pydantic, but nothing of pgdr's
    # domain (the driver, the config model) is loaded to print it
    assert _imported_by("failover", "--help") & {"psycopg", "psycopg_pool", "zstandard"} == set()


def test_restore_and_verify_leave_psycopg_to_be_imported_beside_the_extraction() -> None:
    """restore and verify import psycopg (~40 ms) on a thread while zstd and tar run
    (pgdr/preload.py): their modules must not pull it in before."""
    code = ("import sys, pgdr.cli.cmd_verify, pgdr.cli.cmd_restore, pgdr.restore.verify, pgdr.restore.pitr; "
            "print(sorted(m for m in ('psycopg', 'pgdr.restore.dbchecks', 'pgdr.pg.connect') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
