"""The fast start of `pgdr backup` (issue 17 item 4): a plain `pgdr backup [--json]` runs
without Typer (cli/entry.py) and splits the password out of the conninfo without psycopg
(pg/conninfo.py). What that path must never cost: every failure is still one line and the
right exit code with no pg_basebackup left and nothing complete; the password never
reaches any process's command line nor a world-readable file; the Python conninfo parser
reads every string exactly as libpq does (checked against libpq itself, through psycopg).

Processes and files are watched through /proc and the file system, never pgdr's report.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.conninfo import make_conninfo as libpq_make

from pgdr.cli.entry import plain_backup
from pgdr.pg import conninfo as ci
from tests.conftest import run_cli
from tests.procs import basebackups
from tests.real_cluster import RealCluster

# ---- the conninfo parser against libpq ---------------------------------------------------

PIECES = ["host", "port", "password", "user", "dbname", "sslmode", "=", " ", "\t", "\n", "'", "\\",
          "a", "b c", "x=y", "é", "", "bogus", "postgresql://", "5432", "''", "\\'"]


def test_the_python_parser_reads_every_conninfo_as_libpq_does() -> None:
    """Random strings made of the characters that matter (quotes, backslashes, spaces,
    '='): wherever the Python parser answers, its answer (keys, values, order) is libpq's,
    and it never accepts what libpq refuses; what it declines goes to libpq."""
    rng = random.Random(17)
    answered = 0
    for _ in range(60000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        try:
            want: dict[str, str] | None = {k: str(v) for k, v in conninfo_to_dict(text).items()}
        except Exception:
            want = None
        try:
            got = ci._parse_plain(text)
        except ci._NotPlain:
            continue
        answered += 1
        assert want is not None and list(got.items()) == list(want.items()), (text, got, want)
    assert answered > 3000  # the comparison covered many strings, not only the declined ones


def test_built_conninfos_are_libpqs_and_read_back_exactly() -> None:
    rng = random.Random(6)
    for _ in range(5000):
        params = {k: "".join(rng.choice(["a", " ", "'", "\\", "=", "\t", "é", ""]) for _ in range(rng.randint(0, 6)))
                  for k in rng.sample(ci.KEYWORDS[:14], 3)}
        built = ci.make_conninfo(**params)
        assert built == libpq_make(**params), params
        assert ci.parse(built) == {k: str(v) for k, v in conninfo_to_dict(built).items()}


def test_split_password_leaves_no_trace_of_it() -> None:
    for conninfo in ("host=/tmp port=5 password=s3cr'et user=u", "password = 'a b\\' c' host=h",
                     "user=u password=\\ x", "postgresql://u:pw@h:5/db"):
        plain, password = ci.split_password(conninfo)
        assert password is not None and password not in plain and "password" not in plain
        assert {**conninfo_to_dict(plain), "password": password} == conninfo_to_dict(conninfo)


# ---- which command lines take the fast path ----------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["backup"], (None, False, False)),
    (["backup", "--json"], (None, False, True)),
    (["-c", "x.toml", "--debug", "backup"], (Path("x.toml"), True, False)),
    (["--config=x.toml", "backup", "--json"], (Path("x.toml"), False, True)),
    (["backup", "--help"], None), (["backup", "--logical"], None), (["backup", "--json", "--json"], None),
    (["--version", "backup"], None), (["-c", "backup"], None), (["-c", "a", "-c", "b", "backup"], None),
    (["backup", "--redis"], None), (["list"], None), ([], None), (["--debug", "--debug", "backup"], None),
])
def test_only_the_plain_backup_form_skips_typer(argv: list[str], expected: object) -> None:
    assert plain_backup(argv) == expected


def test_a_command_line_the_fast_path_declines_still_gets_typers_answers(tmp_path: Path) -> None:
    bad = run_cli("backup", "--bogus", config=tmp_path / "none.toml")
    assert bad.returncode == 2 and "No such option" in bad.stderr
    helped = run_cli("backup", "--help", config=tmp_path / "none.toml")
    assert helped.returncode == 0 and "--logical" in helped.stdout


def test_the_plain_backup_imports_no_typer(tmp_path: Path) -> None:
    """The SIGKILL tests of test_backup_start run `python -m pgdr backup`: this proves that
    is the fast path (Typer never imported), so they cover its early phase."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pgdr", "-c", str(tmp_path / "none.toml"),
                           "backup"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pgdr.cli.entry" in imported and not {m for m in imported if m.split(".")[0] in ("typer", "click")}


# ---- failures on the fast path, against real servers --------------------------------------

def _config(cluster: RealCluster, name: str, conninfo: str, extra: str = "") -> Path:
    folder = cluster.root / name
    folder.mkdir(exist_ok=True)
    path = folder / "pgdr.toml"
    path.write_text(f'[cluster]\nname = "{name}"\n\n[repository]\npath = "repo"\n\n'
                    f'[[nodes]]\nname = "db1"\nrole = "primary"\nconninfo = "{conninfo}"\n'
                    f'data_dir = "{cluster.primary.data_dir}"\n\n' + extra)
    os.chmod(path, 0o600)
    return path


def _no_password_env(cluster: RealCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PGPASSFILE"] = "/nonexistent/pgpass"  # root's ~/.pgpass must not rescue a wrong password
    return env


def _assert_nothing_left(repo: Path) -> None:
    assert not basebackups(repo)
    backups = repo / "backups"
    assert not backups.exists() or not [p for p in backups.iterdir() if (p / "pgdr.json").exists()
                                         or p.name.endswith(".partial")]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("case", ["invalid config", "wrong password", "unreachable server"])
def test_failures_are_one_line_the_right_code_and_leave_nothing(real_cluster: RealCluster, case: str) -> None:
    port = real_cluster.primary.port
    if case == "invalid config":
        config = _config(real_cluster, "bad-config", f"host=127.0.0.1 port={port} user=dba",
                         '[backup]\ncompression = 17\n')
        code = 2
    elif case == "wrong password":
        config = _config(real_cluster, "bad-password",
                         f"host=127.0.0.1 port={port} user=dba dbname=postgres password='not it'")
        code = 1
    else:
        from pgdr.pg.instance import free_port

        config = _config(real_cluster, "unreachable", f"host=127.0.0.1 port={free_port()} user=dba")
        code = 1
    result = run_cli("backup", config=config, env=_no_password_env(real_cluster), timeout=120)
    line = _one_line(result.stderr)
    assert result.returncode == code, (result.returncode, line)
    assert "not it" not in result.stderr + result.stdout
    _assert_nothing_left(config.parent / "repo")
    # the same answer as the full (Typer) CLI gives
    full = subprocess.run([sys.executable, "-c", "import sys; from pgdr.cli.main import run; "
                           "sys.argv = ['pgdr', 'backup']; run()"], capture_output=True, text=True, timeout=120,
                          env={**_no_password_env(real_cluster), "PGDR_CONFIG": str(config)})
    assert full.returncode == code
    assert _without_ids(_one_line(full.stderr)) == _without_ids(line)
    _assert_nothing_left(config.parent / "repo")


def _without_ids(line: str) -> str:
    import re

    return re.sub(r"\d{8}T\d{6}F|:\d+", "", line)


def test_the_password_reaches_no_command_line_and_no_world_readable_file(real_cluster: RealCluster) -> None:
    """The password is only in the (0600) config's conninfo; while `pgdr backup` runs, every
    process's argv is read over and over, and every file the run creates or changes in the
    repository, /run/pgdr and /tmp is read if others may read it."""
    password = real_cluster.passwords["dba"]
    config = _config(real_cluster, "pw-in-conninfo", f"host=127.0.0.1 port={real_cluster.primary.port} "
                                                     f"user=dba dbname=postgres password={password}")
    env = {**_no_password_env(real_cluster), "PGDR_CONFIG": str(config)}
    watched = [config.parent, Path("/run/pgdr"), Path("/tmp")]
    t0 = time.time() - 1
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup", "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen_copy = False
    leaks: list[str] = []
    try:
        while proc.poll() is None:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        argv = (entry / "cmdline").read_bytes()
                    except OSError:
                        continue
                    seen_copy |= b"pg_basebackup" in argv and str(config.parent).encode() in argv
                    if password.encode() in argv:
                        leaks.append(f"argv of {entry.name}: {argv[:80]!r}")
            leaks += _world_readable_with(password, watched, t0)
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert seen_copy, "pg_basebackup was never seen running: the watch did not cover the copy"
    leaks += _world_readable_with(password, watched, t0)
    assert leaks == []
    assert password not in out + err


def _world_readable_with(secret: str, roots: list[Path], since: float) -> list[str]:
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            if root == Path("/tmp") and depth >= 2:
                dirs[:] = []  # other runs' trees: only what sits near the top
            for name in files:
                path = Path(folder) / name
                try:
                    st = path.lstat()
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime < since or not st.st_mode & 0o004 \
                            or st.st_size > 1 << 20:
                        continue
                    if secret.encode() in path.read_bytes():
                        found.append(f"world-readable {path}")
                except OSError:
                    continue
    return found


def test_the_summary_written_to_a_file_is_complete_despite_the_fast_exit(real_cluster: RealCluster,
                                                                          tmp_path: Path) -> None:
    """pgdr leaves without the interpreter's teardown after a published backup: stdout is
    block-buffered when it is a file, so the summary must have been flushed first."""
    import json

    config = _config(real_cluster, "summary-to-file", f"host=127.0.0.1 port={real_cluster.primary.port} "
                                                      "user=dba dbname=postgres")
    env = {**real_cluster.env_with_password(), "PGDR_CONFIG": str(config)}
    out = tmp_path / "summary.json"
    with open(out, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "pgdr", "backup", "--json"], env=env, stdout=fh,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert (Path(summary["path"]) / "pgdr.json").is_file() and not basebackups(config.parent / "repo")
