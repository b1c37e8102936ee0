"""pgdr against its peers, measured honestly: the real commands, each in a new process.

Every figure times a command as its user runs it — `pgdr backup`, `pgdr restore`,
`pgdr verify` through the console script, never a pgdr function called in-process — beside
baselines set up as their own users set them up:
- pg_basebackup -Ft -X stream --compress=server-zstd:1 (the arguments pgdr uses);
- pgBackRest per its user guide: a stanza, archive_command = archive-push (archive-check
  on), process-max 2, zst level 1, start-fast; restore with --type=immediate
  --target-action=promote, then pg_ctl start;
- `zstd -d | tar -x` of the same backup files + pg_ctl start (a -X stream backup needs no
  recovery settings).
"First query" means a new connection that sees pg_is_in_recovery() = false.

Methods run interleaved (A B C, A B C, …, at least 3 rounds) on the same data; reported are
the median, the range, and the ratio of medians. The load average is printed beside every
benchmark, as the machine is shared. Two data sets: pgbench (compresses ~10x) and random
text (base64 of random bytes, compresses ~1.3x: the copy, not the compressor, dominates).

    .venv/bin/python bench/peers.py [--data pgbench|random] [--scale 10] [--rounds 3] [--wal-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from _common import wait_archived  # bench/ is on sys.path when a bench is run

from pgdr.pg.instance import free_port
from pgdr.pg.programs import Programs, default_bindir
from pgdr.repo.layout import Repository
from pgdr.sandbox import sandbox as sb

PGDR = str(Path(sys.executable).parent / "pgdr")  # the console script users run
BIN = default_bindir(15)


@dataclass
class Series:
    """Seconds of one method over the rounds."""
    name: str
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def cell(self) -> str:
        return f"{self.median:.2f} s ({min(self.times):.2f}–{max(self.times):.2f})"


@dataclass
class Row:
    what: str
    pgdr: Series
    peer: Series
    goal: str
    command: str
    load: str

    def markdown(self) -> str:
        ratio = self.pgdr.median / self.peer.median
        peer = self.peer.name.replace("|", "\\|")  # a pipe inside a markdown cell
        return (f"| {self.what} | {self.pgdr.cell()} | {peer}: {self.peer.cell()} | "
                f"**{ratio:.2f}** | {self.goal} | {self.load} |")


HEADER = ("| what | pgdr median (range) | baseline median (range) | ratio | goal | load avg |\n"
          "| --- | --- | --- | --- | --- | --- |")


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def sh(cmd: str, *, user: str | None = "postgres", env: dict[str, str] | None = None,
       timeout: float = 3600) -> str:
    """One shell command in a new process (as the server's user by default); its stdout."""
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, user=user, env=env,
                          timeout=timeout, cwd="/tmp")
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
    return proc.stdout


def first_query(port: int, socket_dir: Path, timeout: float = 600) -> None:
    """Until a new connection answers and the server is out of recovery."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(host=str(socket_dir), port=port, dbname="postgres", user="postgres",
                                 connect_timeout=2, autocommit=True) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    return
        except psycopg.Error:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no first query on port {port} within {timeout:.0f}s")
        time.sleep(0.01)


class Bench:
    def __init__(self, base: Path, data: str, scale: int) -> None:
        self.base, self.data, self.scale = base, data, scale
        self.programs = Programs()
        self.sandbox = sb.up(base / "sb", self.programs, standbys=0)
        self.node = self.sandbox.primary
        self.env = {**os.environ, "PGDR_CONFIG": str(self.sandbox.config_path)}
        self.run_dir = base / "run"
        self.run_dir.mkdir(mode=0o755)
        self.programs.run_as.chown(self.run_dir)
        self.n = 0

    # ---- setup -------------------------------------------------------------------------

    def psql(self, sql: str, db: str = "app") -> str:
        return sh(f"{BIN}/psql -X -q -At -h {self.sandbox.socket_dir} -p {self.node.port} -d {db} "
                  f"-c \"{sql}\"")

    def fill(self) -> str:
        pg = f"-h {self.sandbox.socket_dir} -p {self.node.port}"
        if self.data == "pgbench":
            sh(f"{BIN}/pgbench -i -q -s {self.scale} {pg} app")
        else:
            rows = self.scale * 22000  # ~15 MB per unit, as pgbench's scale
            self.psql("create table noise (id int primary key, t text)")
            # base64 of random bytes: ~6 bits of entropy per character; 672 characters a
            # row stays below the TOAST threshold, so PostgreSQL does not compress it
            self.psql("insert into noise select g, (select encode(decode(string_agg(md5(random()::text "
                      "|| k::text || g::text), ''), 'hex'), 'base64') from generate_series(1, 32) k) "
                      f"from generate_series(1, {rows}) g")
        self.psql("checkpoint")
        return self.psql("select pg_size_pretty(pg_database_size('app'))").strip()

    def setup_pgbackrest(self) -> None:
        """As pgBackRest's user guide sets it up: repository, stanza, archive-push as the
        archive_command (restart to enable archive_mode), `check` proves the archive."""
        folder = self.base / "pgbackrest"
        for sub in ("repo", "log", "lock", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            self.programs.run_as.chown(folder / sub)
        self.programs.run_as.chown(folder)
        self.pgbr_conf = folder / "pgbackrest.conf"
        self.pgbr_conf.write_text(
            "[global]\n"
            f"repo1-path={folder / 'repo'}\nlog-path={folder / 'log'}\nlock-path={folder / 'lock'}\n"
            "repo1-retention-full=2\nprocess-max=2\ncompress-type=zst\ncompress-level=1\nstart-fast=y\n"
            "log-level-console=warn\nlog-level-file=warn\n\n"
            f"[bench]\npg1-path={self.node.data_dir}\npg1-port={self.node.port}\n"
            f"pg1-socket-path={self.sandbox.socket_dir}\n")
        os.chmod(self.pgbr_conf, 0o644)
        self.pgbr = f"pgbackrest --config={self.pgbr_conf} --stanza=bench"
        self.psql("alter system set archive_mode = on", db="postgres")
        self.psql(f"alter system set archive_command = '{self.pgbr} archive-push %p'", db="postgres")
        sh(f"{BIN}/pg_ctl -D {self.node.data_dir} -w restart -m fast > /dev/null")
        sh(f"{self.pgbr} stanza-create")
        sh(f"{self.pgbr} check")

    # ---- one run of each method ----------------------------------------------------------

    def target(self, name: str) -> Path:
        self.n += 1
        path = self.run_dir / f"{name}{self.n}"
        return path

    def pgdr(self, *args: str) -> str:
        proc = subprocess.run([PGDR, *args], capture_output=True, text=True, env=self.env, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"pgdr {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout

    def pgdr_backup(self) -> float:
        return timed(lambda: self.pgdr("backup", "--json"))

    def pgdr_backup_from(self, src: Path) -> float:
        """`pgdr backup` of another source tree (--compare-src: e.g. main before a change),
        started as the console script starts it, in the same interpreter and venv."""
        argv = [sys.executable, "-c", "import sys; from pgdr.cli.entry import run; sys.exit(run())",
                "backup", "--json"]
        env = {**self.env, "PYTHONPATH": str(src)}

        def go() -> None:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"pgdr backup from {src} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return timed(go)

    def pg_basebackup(self) -> float:
        target = self.target("pgbb")
        t = timed(lambda: sh(f"{BIN}/pg_basebackup -h {self.sandbox.socket_dir} -p {self.node.port} "
                             f"-D {target} -Ft -X stream --checkpoint=fast --compress=server-zstd:1"))
        shutil.rmtree(target)
        return t

    def pgbackrest_backup(self) -> float:
        return timed(lambda: sh(f"{self.pgbr} --type=full backup"))

    def latest_pgdr_backup(self) -> Path:
        folders = sorted(p for p in (self.sandbox.root / "repo" / "backups").iterdir()
                         if (p / "base.tar.zst").exists())
        return folders[-1]

    def _start_and_query(self, data: Path, port: int) -> None:
        sock = self.run_dir
        sh(f"{BIN}/pg_ctl -D {data} -l {data}.log -w -t 600 -o '-p {port} -k {sock} -c archive_mode=off "
           f"-c logging_collector=off' start > /dev/null")
        first_query(port, sock)

    def _stop(self, data: Path) -> None:
        sh(f"{BIN}/pg_ctl -D {data} -m immediate -w stop > /dev/null 2>&1 || true")
        shutil.rmtree(data, ignore_errors=True)
        Path(f"{data}.log").unlink(missing_ok=True)

    def tar_restore(self) -> float:
        """zstd -d | tar -x of pgdr's own backup files, pg_ctl start, first query."""
        backup, data, port = self.latest_pgdr_backup(), self.target("tar"), free_port()

        def run() -> None:
            sh(f"mkdir -m 700 {data} && zstd -q -dc {backup}/base.tar.zst | tar -xf - -C {data} && "
               f"tar -xf {backup}/pg_wal.tar -C {data}/pg_wal")
            self._start_and_query(data, port)
        t = timed(run)
        self._stop(data)
        return t

    def pgbackrest_restore(self, immediate: bool = True) -> float:
        data, port = self.target("pgbr"), free_port()
        how = "--type=immediate --target-action=promote" if immediate else ""

        def run() -> None:
            sh(f"mkdir -m 700 {data} && {self.pgbr} --pg1-path={data} {how} restore")
            self._start_and_query(data, port)
        t = timed(run)
        self._stop(data)
        return t

    def pgdr_restore(self, *how: str) -> float:
        data, port = self.target("pgdr"), free_port()

        def run() -> None:
            out = json.loads(self.pgdr("restore", *how, "--target-dir", str(data), "--port", str(port), "--json"))
            first_query(port, Path(_find_key(out, "socket_dir")))
            print(f"    pgdr restore {' '.join(how)} phases: {out.get('phases')}", file=sys.stderr, flush=True)
        t = timed(run)
        self._stop(data)
        return t

    def pgdr_verify(self) -> float:
        out: list[str] = []
        t = timed(lambda: out.append(self.pgdr("verify", "latest", "--json")))
        record = json.loads(out[0])  # parsed after the clock stopped
        print(f"    pgdr verify phases: {record.get('phases')}", file=sys.stderr, flush=True)
        return t

    def plain_recovery(self) -> float:
        """tar extract + recovery.signal + restore_command = zstd from pgdr's archive +
        pg_ctl start, until promoted at the end of the archive: the by-hand PITR."""
        backup, data, port = self.latest_pgdr_backup(), self.target("plainpitr"), free_port()
        wal = self.sandbox.root / "repo" / "wal"

        def run() -> None:
            sh(f"mkdir -m 700 {data} && zstd -q -dc {backup}/base.tar.zst | tar -xf - -C {data} && "
               f"tar -xf {backup}/pg_wal.tar -C {data}/pg_wal && touch {data}/recovery.signal && "
               f"echo \"restore_command = 'zstd -q -dc {wal}/%f.zst > %p'\" >> {data}/postgresql.auto.conf")
            self._start_and_query(data, port)
        t = timed(run)
        self._stop(data)
        return t

    def wal_load(self, seconds: int) -> None:
        sh(f"{BIN}/pgbench -n -c 2 -j 2 -T {seconds} -h {self.sandbox.socket_dir} -p {self.node.port} app"
           if self.data == "pgbench" else
           f"{BIN}/pgbench -n -c 2 -j 2 -T {seconds} -h {self.sandbox.socket_dir} -p {self.node.port} "
           "-f /dev/stdin app <<'EOF'\n\\set id random(1, 1000)\n"
           "update noise set t = md5(random()::text) || t where id = :id;\nEOF")
        # both archives hold the segment that was current: pgdr's and pgBackRest's (`check`
        # switches WAL and waits for archive-push)
        wait_archived(self.sandbox, Repository(self.sandbox.root / "repo"))
        sh(f"{self.pgbr} check")


def _find_key(doc: object, key: str) -> str:
    """The first value of `key` anywhere in a JSON document."""
    if isinstance(doc, dict):
        if key in doc:
            return str(doc[key])
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            try:
                return _find_key(item, key)
            except KeyError:
                continue
    raise KeyError(key)


def interleaved(rounds: int, methods: dict[str, Callable[[], float]]) -> dict[str, Series]:
    series = {name: Series(name) for name in methods}
    for r in range(rounds):
        for name, method in methods.items():
            series[name].times.append(method())
        print(f"  round {r + 1}: " + ", ".join(f"{n} {s.times[-1]:.2f}s" for n, s in series.items()),
              file=sys.stderr, flush=True)
    return series


PARTS = ("backup", "restore", "pitr")


def run(data: str, scale: int, rounds: int, wal_seconds: int, parts: tuple[str, ...] = PARTS,
        compare_src: Path | None = None) -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix=f"pgdr-bench-peers-{data}-", dir="/tmp"))
    os.chmod(base, 0o755)
    bench = None
    rows: list[Row] = []
    cmd = (f".venv/bin/python bench/peers.py --data {data} --scale {scale} --rounds {rounds} "
           f"--wal-seconds {wal_seconds} --parts {','.join(parts)}"
           + (f" --compare-src {compare_src}" if compare_src is not None else ""))
    try:
        bench = Bench(base, data, scale)
        size = bench.fill()
        print(f"[{data}] database app: {size}", file=sys.stderr, flush=True)
        bench.setup_pgbackrest()
        label = f"{data} {size}"

        if "restore" in parts or "pitr" in parts:
            bench.pgdr("backup")  # what the restores start from, whatever the parts
            sh(f"{bench.pgbr} --type=full backup")
        if "backup" in parts:
            lo = load()
            methods = {"pgdr backup": bench.pgdr_backup, "pg_basebackup": bench.pg_basebackup}
            if compare_src is not None:  # never right after the other pgdr: a backup id is per second
                methods["pgdr backup (compared)"] = lambda: bench.pgdr_backup_from(compare_src)
            methods["pgBackRest backup"] = bench.pgbackrest_backup
            s = interleaved(rounds, methods)
            lo = f"{lo}→{load()}"
            rows.append(Row(f"backup, whole command ({label})", s["pgdr backup"], s["pg_basebackup"],
                            "≤ 1.05", cmd, lo))
            rows.append(Row(f"backup ({label})", s["pgdr backup"], s["pgBackRest backup"], "—", cmd, lo))
            if compare_src is not None:
                rows.append(Row(f"backup, {compare_src} ({label})", s["pgdr backup (compared)"],
                                s["pg_basebackup"], "≤ 1.05", cmd, lo))
                rows.append(Row(f"backup, this tree vs {compare_src} ({label})", s["pgdr backup"],
                                s["pgdr backup (compared)"], "—", cmd, lo))

        if "restore" in parts:
            lo = load()
            s = interleaved(rounds, {"pgdr restore --immediate": lambda: bench.pgdr_restore("--immediate"),
                                     "pgBackRest restore + start": bench.pgbackrest_restore,
                                     "zstd | tar + start": bench.tar_restore,
                                     "pgdr verify": bench.pgdr_verify})
            lo = f"{lo}→{load()}"
            rows.append(Row(f"restore --immediate → first query ({label})", s["pgdr restore --immediate"],
                            s["pgBackRest restore + start"], "≤ 1.0", cmd, lo))
            rows.append(Row(f"restore --immediate → first query ({label})", s["pgdr restore --immediate"],
                            s["zstd | tar + start"], "≤ 1.2", cmd, lo))
            rows.append(Row(f"verify, every check ({label})", s["pgdr verify"], s["zstd | tar + start"],
                            "≤ 1.5", cmd, lo))

        if "pitr" in parts and wal_seconds > 0:
            bench.wal_load(wal_seconds)
            lo = load()
            s = interleaved(rounds, {"pgdr restore --latest": lambda: bench.pgdr_restore("--latest"),
                                     "plain recovery": bench.plain_recovery,
                                     "pgBackRest restore (end of archive)":
                                         lambda: bench.pgbackrest_restore(immediate=False)})
            lo = f"{lo}→{load()}"
            rows.append(Row(f"PITR to the end of {wal_seconds} s of write load ({label})",
                            s["pgdr restore --latest"], s["plain recovery"], "—", cmd, lo))
            rows.append(Row(f"PITR to the end of {wal_seconds} s of write load ({label})",
                            s["pgdr restore --latest"], s["pgBackRest restore (end of archive)"], "—", cmd, lo))
    finally:
        if bench is not None:
            for data_dir in bench.run_dir.iterdir() if bench.run_dir.exists() else []:
                if data_dir.is_dir():
                    bench._stop(data_dir)
            sb.down(bench.sandbox.root, bench.programs, purge=True)
        shutil.rmtree(base, ignore_errors=True)
    return rows


def compile_pgdr() -> None:
    """Bytecode for pgdr's modules, as `pip install` writes it: from a source checkout under
    PYTHONDONTWRITEBYTECODE=1 every `pgdr` process would compile them again (~50 ms a start
    on this machine), a cost no installed pgdr pays."""
    import compileall

    import pgdr

    compileall.compile_dir(str(Path(pgdr.__file__).parent), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("pgbench", "random"), default="pgbench")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wal-seconds", type=int, default=20)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--compare-src", type=Path, help="backup part: also time `pgdr backup` of this src/ "
                    "folder (e.g. `git archive main src | tar -x -C /tmp/before`), interleaved")
    args = ap.parse_args()
    if args.rounds < 3:
        raise SystemExit("--rounds: at least 3 interleaved rounds")
    parts = tuple(p for p in args.parts.split(",") if p)
    if not set(parts) <= set(PARTS):
        raise SystemExit(f"--parts: of {', '.join(PARTS)}")
    compile_pgdr()
    if args.compare_src is not None:
        import compileall

        compileall.compile_dir(str(args.compare_src), quiet=1)
    rows = run(args.data, args.scale, args.rounds, args.wal_seconds, parts, args.compare_src)
    print(HEADER)
    for row in rows:
        print(row.markdown())


if __name__ == "__main__":
    main()
