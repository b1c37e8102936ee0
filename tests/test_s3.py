"""An S3 repository against a real S3-protocol server (moto_server over HTTP), with faults.

The bucket is read back with boto3 directly (an independent look, not pgdr's own report).
Faults are injected with a TCP proxy between pgdr and the server: cutting it is the store
going away mid-request (connection refused/reset), while the server keeps its objects so
what the bucket holds afterwards can be counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.s3_server import BUCKET
from tests.s3_server import bucket_keys as keys
from tests.test_backup_digests import seal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, predicate: Any, timeout: float = 60, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"waited {timeout}s for {what}")


class Proxy:
    """A TCP relay to the S3 server that the test can cut (and restore) at will; with
    cut_after set, it cuts itself once that many request bytes went through."""

    def __init__(self, upstream: int) -> None:
        self.upstream, self.port = upstream, _free_port()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.sent = 0
        self.cut_after: int | None = None
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self.listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(65536):
                if upward:
                    with self.lock:
                        self.sent += len(data)
                        over = self.cut_after is not None and self.sent > self.cut_after
                    if over:
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            self.cut_after = None
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns = []


@pytest.fixture(scope="module")
def sandbox(base_dir: Path, programs: Programs) -> Iterator[sb.Sandbox]:
    box = sb.up(base_dir / "s3", programs, standbys=0)
    yield box
    sb.down(box.root, programs, purge=True)


def s3_config(box: sb.Sandbox, name: str, endpoint_port: int, prefix: str, key_env: str | None = None,
              url: bool = True) -> Path:
    """The sandbox's pgdr.toml with its repository in the bucket (local work folder `name`)."""
    repo = [f'path = "{name}"']
    if url:
        repo += [f'url = "s3://{BUCKET}/{prefix}"', f'endpoint = "http://127.0.0.1:{endpoint_port}"',
                 'region = "us-east-1"']
    if key_env:
        repo.append(f'encryption_key_env = "{key_env}"')
    text = box.config_path.read_text().replace('[repository]\npath = "repo"', "[repository]\n" + "\n".join(repo))
    path = box.root / f"{name}.toml"
    path.write_text(text)
    return path


def current_segment(box: sb.Sandbox) -> int:
    with session(box.conninfo(box.primary)) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
    assert row is not None
    seg = parse_segment_name(row["f"])
    assert seg is not None
    return seg.segno


def archived_segnos(client: Any, prefix: str) -> list[int]:
    segs = (parse_segment_name(k.rsplit("/", 1)[1].removesuffix(".zst")) for k in keys(client, f"{prefix}wal/"))
    return sorted(s.segno for s in segs if s is not None and s.timeline == 1)


def switch_wal(box: sb.Sandbox, times: int) -> None:
    with session(box.conninfo(box.primary)) as conn:
        for _ in range(times):
            conn.execute("insert into orders (customer_id) values (1)")
            conn.execute("select pg_switch_wal()")


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and "Traceback" not in err, err  # the error line (+ its hint)
    return lines[0]


# ---- backup, list, verify, restore from the bucket -----------------------------------------

def test_backup_verify_and_pitr_from_s3(sandbox: sb.Sandbox, moto: tuple[int, Any], base_dir: Path) -> None:
    port, client = moto
    cfg = s3_config(sandbox, "work-a", port, "plain")
    assert run_cli("archiver", "start", config=cfg).returncode == 0
    try:
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("create table s3_marker (n int)")
            conn.execute("insert into s3_marker select generate_series(1, 100)")
        result = run_cli("backup", "--json", config=cfg)
        assert result.returncode == 0, result.stderr
        bid = json.loads(result.stdout)["id"]
        stored = keys(client, f"plain/backups/{bid}/")
        assert {f"plain/backups/{bid}/{n}" for n in ("pgdr.json", "base.tar.zst", "backup_manifest")} <= set(stored)
        # nothing of the backup stays in the local folder but its pgdr.json and backup_manifest
        cached = sorted(p.name for p in (sandbox.root / "work-a" / "backups" / bid).iterdir())
        assert cached == ["backup_manifest", "pgdr.json"]
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("insert into s3_marker select generate_series(101, 250)")
        switch_wal(sandbox, 1)
        last = current_segment(sandbox) - 1
        _wait("the archiver to upload the switched segment", lambda: last in archived_segnos(client, "plain/"))

        # another machine: an empty working folder, the same bucket
        other = s3_config(sandbox, "work-b", port, "plain")
        listed = json.loads(run_cli("list", "--json", config=other).stdout)
        assert [b["id"] for b in listed] == [bid]
        verified = run_cli("verify", "latest", "--json", config=other)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert f"plain/backups/{bid}/verify.json" in keys(client, f"plain/backups/{bid}/")
        assert json.loads(run_cli("list", "--json", config=cfg).stdout)[0]["verified"] == "verified"
        status = run_cli("status", "--json", config=cfg)
        checks = {c["name"]: c for c in json.loads(status.stdout)["checks"]}
        for name in ("backup", "verified backup", "archive gaps", "archive lag"):
            assert checks[name]["status"] == "ok", (name, checks[name])

        target = base_dir / "s3-restored"
        restored = run_cli("restore", "--latest", "--target-dir", str(target), "--json", config=other)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        try:
            conninfo = str(json.loads(restored.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
            with session(conninfo) as c:
                row = c.execute("select count(*) as n from s3_marker").fetchone()
            assert row is not None and row["n"] == 250
        finally:
            stop_restored(target, Programs())
        # find-disaster reads the bucket's WAL: a mass DELETE, named from the backup's relation map
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("delete from s3_marker where n > 200")
        switch_wal(sandbox, 1)
        last = current_segment(sandbox) - 1
        _wait("the archiver to upload the DELETE", lambda: last in archived_segnos(client, "plain/"))
        found = run_cli("find-disaster", "--json", "--min-rows", "10", "--kinds", "delete", config=other)
        assert found.returncode == 0, found.stderr
        hits = [(d["table"], d["rows"]) for d in json.loads(found.stdout)["disasters"]]
        assert hits == [("public.s3_marker", 50)]
        # the working folder's cache holds no backup file after verify and restore
        cached = sorted(p.name for p in (sandbox.root / "work-b" / "backups" / bid).iterdir())
        assert cached == ["backup_manifest", "pgdr.json", "verify.json"]

        # a flipped byte in the bucket: verify refuses the backup, naming the object
        key = f"plain/backups/{bid}/base.tar.zst"
        body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
        third = s3_config(sandbox, "work-c", port, "plain")
        damaged = run_cli("verify", bid, config=third)
        assert damaged.returncode == 1
        assert "base.tar.zst" in one_line(damaged.stderr) and "does not match" in damaged.stderr
    finally:
        run_cli("archiver", "stop", config=cfg)


def test_a_local_repository_is_never_taken_for_a_cache(sandbox: sb.Sandbox, moto: tuple[int, Any]) -> None:
    """Syncing prunes the working folder's backups/ and wal/ to the bucket's listing: pointing
    url at a config whose path holds a real local repository must refuse, not prune it."""
    port, client = moto
    repo = sandbox.root / "repo"
    before = sorted(p.name for p in (repo / "wal").glob("*.zst"))
    assert before  # the sandbox's own archiver filled it
    text = sandbox.config_path.read_text().replace(
        '[repository]\npath = "repo"', f'[repository]\npath = "repo"\nurl = "s3://{BUCKET}/hijack"\n'
        f'endpoint = "http://127.0.0.1:{port}"')
    cfg = sandbox.root / "hijack.toml"
    cfg.write_text(text)
    refused = run_cli("list", config=cfg)
    assert refused.returncode == 2 and "holds a local repository" in one_line(refused.stderr)
    assert set(before) <= {p.name for p in (repo / "wal").glob("*.zst")}
    # and a working folder stays with its bucket
    s3_config(sandbox, "work-owned", port, "owned")
    assert run_cli("list", config=sandbox.root / "work-owned.toml").returncode == 0
    s3_config(sandbox, "work-owned", port, "elsewhere")
    other = run_cli("list", config=sandbox.root / "work-owned.toml")
    assert other.returncode == 2 and "is the working folder of" in one_line(other.stderr)

    # a bucket another cluster owns: refused from a fresh working folder, its identity untouched
    foreign = json.dumps({"system_identifier": "1", "pg_version_num": 150000, "wal_segment_size": 16 << 20})
    client.put_object(Bucket=BUCKET, Key="foreign/pgdr-repo.json", Body=foreign.encode())
    refused = run_cli("backup", config=s3_config(sandbox, "work-foreign", port, "foreign"))
    assert refused.returncode == 1 and "belongs to cluster 1" in one_line(refused.stderr)
    assert client.get_object(Bucket=BUCKET, Key="foreign/pgdr-repo.json")["Body"].read() == foreign.encode()
    assert not keys(client, "foreign/backups/")


def test_a_sha256_backup_in_the_bucket_verifies_and_its_damage_is_caught(
        sandbox: sb.Sandbox, moto: tuple[int, Any], base_dir: Path) -> None:
    """A backup written before BLAKE3 (pgdr.json format 1, sha256 per file), read from the
    bucket by a fresh working folder: the stream is checked with the digest pgdr.json
    records. The older pgdr.json is rebuilt here with hashlib from the bucket's objects."""
    port, client = moto
    cfg = s3_config(sandbox, "work-old", port, "old")
    assert run_cli("archiver", "start", config=cfg).returncode == 0
    try:
        result = run_cli("backup", "--json", config=cfg)
        assert result.returncode == 0, result.stderr
        bid = json.loads(result.stdout)["id"]
        doc_key = f"old/backups/{bid}/pgdr.json"
        doc = json.loads(client.get_object(Bucket=BUCKET, Key=doc_key)["Body"].read())
        assert doc["format"] == 2
        doc["format"] = 1
        doc["files"] = {name: {"size": e["size"], "sha256": hashlib.sha256(client.get_object(
            Bucket=BUCKET, Key=f"old/backups/{bid}/{name}")["Body"].read()).hexdigest()}
            for name, e in doc["files"].items()}
        doc["manifest_sha256"] = seal(doc)
        client.put_object(Bucket=BUCKET, Key=doc_key, Body=json.dumps(doc, indent=2).encode())

        verified = run_cli("verify", bid, "--json", config=s3_config(sandbox, "work-old-b", port, "old"))
        assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr
        files = next(c for c in json.loads(verified.stdout)["checks"] if c["name"] == "files")
        assert files["status"] == "ok" and "sha256" in files["summary"], files

        key = f"old/backups/{bid}/base.tar.zst"
        body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
        damaged = run_cli("verify", bid, config=s3_config(sandbox, "work-old-c", port, "old"))
        assert damaged.returncode == 1, damaged.stderr
        assert "base.tar.zst" in one_line(damaged.stderr) and "sha256" in damaged.stderr \
            and "does not match" in damaged.stderr
        # --force: past the failed verify.json, the restore's own stream must catch it
        target = base_dir / "s3-old-restored"
        restored = run_cli("restore", "--backup", bid, "--target-dir", str(target), "--immediate", "--force",
                           config=s3_config(sandbox, "work-old-d", port, "old"))
        assert restored.returncode == 1, restored.stdout + restored.stderr
        assert "base.tar.zst" in restored.stderr and "sha256" in restored.stderr and not target.exists()
    finally:
        run_cli("archiver", "stop", config=cfg)


# ---- encryption ------------------------------------------------------------------------------

def test_encrypted_repository_s3_and_local(sandbox: sb.Sandbox, moto: tuple[int, Any]) -> None:
    port, client = moto
    cfg = s3_config(sandbox, "work-enc", port, "enc", key_env="PGDR_TEST_KEY")
    env = {**os.environ, "PGDR_TEST_KEY": "correct horse battery staple"}
    result = run_cli("backup", "--json", config=cfg, env=env)
    assert result.returncode == 0, result.stderr
    bid = json.loads(result.stdout)["id"]
    stored = keys(client, "enc/")
    assert "enc/pgdr-encryption.json" in stored
    for key in (f"enc/backups/{bid}/base.tar.zst", f"enc/backups/{bid}/pgdr.json", "enc/pgdr-repo.json"):
        raw = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        # sealed: no zstd magic, no JSON, no table names in the clear
        assert raw.startswith(b"PGDRAE1\0") and b"s3_marker" not in raw and b"system_identifier" not in raw

    # wrong passphrase, no passphrase, no encryption configured: one line, exit 2
    wrong = run_cli("list", config=cfg, env={**env, "PGDR_TEST_KEY": "wrong"})
    assert wrong.returncode == 2 and "wrong passphrase" in one_line(wrong.stderr)
    unset = run_cli("list", config=cfg, env={k: v for k, v in env.items() if k != "PGDR_TEST_KEY"})
    assert unset.returncode == 2 and "PGDR_TEST_KEY is not set" in one_line(unset.stderr)
    plain = run_cli("list", config=s3_config(sandbox, "work-enc2", port, "enc"), env=env)
    assert plain.returncode == 2 and "is encrypted" in one_line(plain.stderr)

    # the archiver seals each segment and keeps no decrypted copy; verify with the key passes
    # from another working folder and leaves no decrypted file behind
    assert run_cli("archiver", "start", config=cfg, env=env).returncode == 0
    try:
        switch_wal(sandbox, 1)
        last = current_segment(sandbox) - 1
        _wait("a sealed segment", lambda: last in archived_segnos(client, "enc/"))
        seg = next(k for k in keys(client, "enc/wal/") if k.endswith(".zst"))
        assert client.get_object(Bucket=BUCKET, Key=seg)["Body"].read().startswith(b"PGDRAE1\0")
        assert not list((sandbox.root / "work-enc" / "wal").glob("*.zst"))
        other = s3_config(sandbox, "work-enc3", port, "enc", key_env="PGDR_TEST_KEY")
        assert [b["id"] for b in json.loads(run_cli("list", "--json", config=other, env=env).stdout)] == [bid]
        verified = run_cli("verify", bid, "--json", config=other, env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert not list((sandbox.root / "work-enc3" / "wal").glob("*.zst"))
        assert sorted(p.name for p in (sandbox.root / "work-enc3" / "backups" / bid).iterdir()) == [
            "backup_manifest", "pgdr.json", "verify.json"]
    finally:
        run_cli("archiver", "stop", config=cfg, env=env)

    # a flipped byte fails authentication, naming the object
    key = f"enc/backups/{bid}/base.tar.zst"
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0x40
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    damaged = run_cli("verify", bid, config=other, env=env)
    assert damaged.returncode == 1 and "fails authentication" in one_line(damaged.stderr)

    # a local encrypted repository: the same objects under <path>/objects, nothing in the clear
    local = s3_config(sandbox, "work-local-enc", port, "", key_env="PGDR_TEST_KEY", url=False)
    result = run_cli("backup", "--json", config=local, env=env)
    assert result.returncode == 0, result.stderr
    lid = json.loads(result.stdout)["id"]
    objects = sandbox.root / "work-local-enc" / "objects"
    assert (objects / "backups" / lid / "base.tar.zst").read_bytes().startswith(b"PGDRAE1\0")
    assert b"s3_marker" not in (objects / "backups" / lid / "pgdr.json").read_bytes()
    assert [b["id"] for b in json.loads(run_cli("list", "--json", config=local, env=env).stdout)] == [lid]
    wrong = run_cli("list", config=local, env={**env, "PGDR_TEST_KEY": "nope"})
    assert wrong.returncode == 2 and "wrong passphrase" in one_line(wrong.stderr)


# ---- the store going away ----------------------------------------------------------------------

def test_store_cut_mid_backup_leaves_nothing_complete(sandbox: sb.Sandbox, moto: tuple[int, Any]) -> None:
    port, client = moto
    proxy = Proxy(port)
    cfg = s3_config(sandbox, "work-cut", proxy.port, "cut")
    proxy.cut_after = 2_000_000  # past the catalog requests: inside base.tar.zst's upload
    failed = run_cli("backup", config=cfg, timeout=240)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "object store" in one_line(failed.stderr)
    assert proxy.listener is None and proxy.sent > 2_000_000  # it really was cut mid-upload
    # independently: the bucket lists no complete backup (no pgdr.json)
    assert not [k for k in keys(client, "cut/backups/") if k.endswith("/pgdr.json")]
    proxy.start()
    assert json.loads(run_cli("list", "--json", config=cfg).stdout) == []
    # the next backup clears the debris and completes
    again = run_cli("backup", "--json", config=cfg)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    ids = {k.split("/")[2] for k in keys(client, "cut/backups/")}
    assert ids == {summary["id"]}
    proxy.cut()


def test_archiver_catches_up_without_gap_after_store_outage(sandbox: sb.Sandbox, moto: tuple[int, Any]) -> None:
    port, client = moto
    proxy = Proxy(port)
    cfg = s3_config(sandbox, "work-arch", proxy.port, "arch")
    assert run_cli("archiver", "start", config=cfg).returncode == 0
    state = sandbox.root / "work-arch" / "archiver" / "state.json"
    try:
        switch_wal(sandbox, 1)
        first = current_segment(sandbox) - 1
        _wait("the first upload", lambda: first in archived_segnos(client, "arch/"))
        proxy.cut()
        # the archiver also (re)starts while the store is away
        assert run_cli("archiver", "stop", config=cfg).returncode == 0
        restarted = run_cli("archiver", "start", config=cfg)
        assert restarted.returncode == 0, restarted.stderr
        switch_wal(sandbox, 4)
        during = current_segment(sandbox) - 1
        _wait("the archiver to record the outage",
              lambda: "object store" in (json.loads(state.read_text()).get("problem") or ""))
        assert during not in archived_segnos(client, "arch/")
        proxy.start()
        switch_wal(sandbox, 1)
        last = current_segment(sandbox) - 1
        def caught_up() -> list[int]:
            listed = archived_segnos(client, "arch/")  # one listing: a consistent view
            return [s for s in listed if s <= last] if last in listed else []

        segnos = _wait("the archiver to catch up", caught_up, timeout=90)
        start = segnos[0]
        assert segnos == list(range(start, last + 1)) and start <= first  # no gap, nothing skipped
        # the sweep records success after its uploads are visible in the bucket: wait for it
        _wait("the archiver to clear its problem", lambda: json.loads(state.read_text()).get("problem") is None, timeout=30)

        # expire in the bucket: the older backup and the WAL only it needed go, the rest stays
        ids = [json.loads(run_cli("backup", "--json", config=cfg).stdout)["id"] for _ in range(2)]
        switch_wal(sandbox, 1)
        last = current_segment(sandbox) - 1
        _wait("the WAL after the backups", lambda: last in archived_segnos(client, "arch/"))
        with open(cfg, "a") as fh:
            fh.write('\n[retention]\nkeep_last = 1\nkeep_within = "0s"\n')
        expired = run_cli("expire", "--yes", config=cfg)
        assert expired.returncode == 0, expired.stdout + expired.stderr
        assert {k.split("/")[2] for k in keys(client, "arch/backups/")} == {ids[1]}
        newest = json.loads(client.get_object(Bucket=BUCKET, Key=f"arch/backups/{ids[1]}/pgdr.json")["Body"].read())
        kept = archived_segnos(client, "arch/")
        start_seg = parse_segment_name(newest["start_wal"])
        # from the kept backup's first segment on, without a gap (more may have arrived since)
        assert start_seg is not None and last in kept and kept == list(range(start_seg.segno, kept[-1] + 1))
        assert start_seg.segno > segnos[0]  # older WAL did go
    finally:
        run_cli("archiver", "stop", config=cfg)
        proxy.cut()


def test_tar_streams_up_while_written_and_leaves_no_local_copy(moto: tuple[int, Any], base_dir: Path) -> None:
    """The uploader follows a growing file (as pg_basebackup writes base.tar.zst) and frees
    what it sent: the local disk never holds the whole file. The digest it reports is the
    BLAKE3 pgdr.json records, checked here with the blake3 package's one-shot hash."""
    from blake3 import blake3

    from pgdr.repo.store import S3Store
    from pgdr.repo.streamup import StreamingUpload

    port, client = moto
    folder = base_dir / "streamup"
    folder.mkdir()
    store = S3Store(f"s3://{BUCKET}/stream", f"http://127.0.0.1:{port}", "us-east-1")
    upload = StreamingUpload(store, folder, "B1").start()
    digest, chunk = blake3(), os.urandom(1 << 20)
    path = folder / "base.tar.zst"
    with open(path, "wb") as fh:
        for i in range(40):
            fh.write(chunk)
            fh.flush()
            digest.update(chunk)
            if i % 10 == 9:  # let the uploader catch up, then look at the disk
                _wait("the uploader to catch up", lambda: path.stat().st_blocks * 512 < 20 << 20, timeout=60)
    results = upload.finish()
    assert results == {"base.tar.zst": (40 << 20, digest.hexdigest())}
    assert path.stat().st_size == 40 << 20 and path.stat().st_blocks * 512 < 20 << 20
    body = client.get_object(Bucket=BUCKET, Key="stream/backups/B1/base.tar.zst")["Body"].read()
    assert blake3(body).hexdigest() == digest.hexdigest()


def test_logical_backup_to_s3_restores_from_another_folder(sandbox: sb.Sandbox, moto: tuple[int, Any],
                                                           base_dir: Path) -> None:
    port, client = moto
    cfg = s3_config(sandbox, "work-l1", port, "logical")
    result = run_cli("backup", "--logical", "--json", config=cfg)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    stored = keys(client, f"logical/backups/{summary['id']}/")
    assert any(k.endswith("/toc.dat") for k in stored)  # pg_dump's directory format, file by file
    other = s3_config(sandbox, "work-l2", port, "logical")
    target = base_dir / "s3-logical-restored"
    restored = run_cli("restore", "--backup", summary["id"], "--target-dir", str(target), "--json", config=other)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    try:
        info = json.loads(restored.stdout)
        got = Programs().run("psql", ["-X", "-A", "-t", "-h", info["socket_dir"], "-p", str(info["port"]),
                                      "-U", "postgres", "-d", "app", "-c", "select count(*) from customers"],
                             timeout=30)
        assert int(got.stdout.strip()) == summary["tables"]["app"]["public.customers"] == 20000
    finally:
        stop_restored(target, Programs())
