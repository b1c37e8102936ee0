"""Redis snapshots in the repository's own store (issue #19 with #14's repository): the
local folder, an S3 bucket (a real moto_server over HTTP) and an encrypted bucket.

The bucket is read back with boto3 directly, never through pgdr: what it holds, whether
a known key name or the metadata shows through in plaintext, and a byte flipped in it."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.instance import free_port
from pgdr.pg.programs import RunAs
from pgdr.rdb.store import DATA, META, SnapshotDamaged, SnapshotStore
from pgdr.repo.layout import Repository
from pgdr.repo.store import Store
from tests.conftest import run_cli
from tests.redis_servers import RedisServer, stop_restored, write_config
from tests.s3_server import BUCKET, bucket_keys

KEY_ENV = "PGDR_TEST_REDIS_PASSPHRASE"
CANARY = b"pgdr-canary-key-3f9a1c"


@pytest.fixture(scope="module")
def rbase(base_dir: Path) -> Path:
    path = base_dir / "redis-store"
    path.mkdir(exist_ok=True)
    return path


def _repository(kind: str, root: Path, port: int) -> Repository:
    """A Repository whose store is what [repository] would give for `kind`."""
    from pgdr.repo.crypto import open_encrypted
    from pgdr.repo.store import LocalStore, S3Store

    root.mkdir(parents=True)
    if kind == "local":
        return Repository(root)
    inner: Store = (LocalStore(root / "objects") if kind == "local-encrypted"
                    else S3Store(f"s3://{BUCKET}/{root.name}", f"http://127.0.0.1:{port}", "us-east-1"))
    os.environ[KEY_ENV] = "correct horse"
    return Repository(root, RunAs(), open_encrypted(inner, KEY_ENV if kind.endswith("encrypted") else None, root))


def _flip(kind: str, root: Path, client: Any, key: str) -> None:
    """Change one byte of the stored object, where it is stored."""
    if kind.startswith("local"):
        path = root / ("objects" if kind == "local-encrypted" else "") / key
        body = bytearray(path.read_bytes())
        body[len(body) // 2] ^= 0x01
        path.write_bytes(bytes(body))
        return
    s3_key = f"{root.name}/{key}"
    body = bytearray(client.get_object(Bucket=BUCKET, Key=s3_key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=s3_key, Body=bytes(body))


@pytest.mark.parametrize("kind", ["local", "local-encrypted", "s3", "s3-encrypted"])
def test_snapshot_store_publishes_last_and_checks_every_read(kind: str, rbase: Path,
                                                             moto: tuple[int, Any]) -> None:
    port, client = moto
    root = rbase / f"unit-{kind}"
    store = SnapshotStore(_repository(kind, root, port), "cache")
    payload = os.urandom(1 << 20) * 10  # 10 MiB: more than one multipart part and one cipher chunk
    stored = store.put(f"a/{DATA}", io.BytesIO(payload))
    assert stored.size == len(payload)
    assert store.list() == [] and store.unpublished() == ["a"]  # data without metadata: not published
    store.put_json(f"a/{META}", {"id": "a"})
    assert store.list() == ["a"] and store.unpublished() == []
    assert store.get_json(f"a/{META}") == {"id": "a"} and store.get_json(f"b/{META}") is None
    assert b"".join(store.open(f"a/{DATA}", stored.sha256)) == payload
    if kind.startswith("s3"):  # where it is: under redis/<name>/ of the repository's prefix, in the bucket
        held = bucket_keys(client, f"{root.name}/redis/")
        assert set(held) == {f"{root.name}/redis/cache/a/{DATA}", f"{root.name}/redis/cache/a/{META}"}
        sealed = client.get_object(Bucket=BUCKET, Key=f"{root.name}/redis/cache/a/{META}")["Body"].read()
        assert (b'"id"' in sealed) == (kind == "s3")
    # one changed byte in the store: the read fails (at the end, or at the failing chunk)
    _flip(kind, root, client, f"redis/cache/a/{DATA}")
    with pytest.raises(SnapshotDamaged):
        b"".join(store.open(f"a/{DATA}", stored.sha256))
    store.put(f"b/{DATA}", io.BytesIO(b"partial"))
    assert store.remove_unpublished() == ["b"]
    store.delete("a")
    assert store.list() == [] and store.unpublished() == []
    assert store.objects.listing("redis/") == []
    with pytest.raises(SnapshotDamaged, match="missing"):
        b"".join(store.open(f"a/{DATA}", stored.sha256))
    if kind.startswith("local"):
        objects = root / ("objects" if kind == "local-encrypted" else "")
        assert not (objects / "redis/cache/a").exists() and not (objects / "redis/cache/b").exists()
    else:
        assert bucket_keys(client, f"{root.name}/redis/") == {}


@pytest.mark.parametrize("kind", ["local", "local-encrypted"])
def test_a_killed_local_writer_leaves_nothing_after_the_next_backup(kind: str, rbase: Path) -> None:
    root = rbase / f"unit-debris-{kind}"
    store = SnapshotStore(_repository(kind, root, 0), "cache")
    dead = root / ("objects" if kind == "local-encrypted" else "") / "redis/cache/20200101T000000000Z"
    dead.mkdir(parents=True)
    (dead / f".{DATA}.tmp").write_bytes(b"half")  # what SIGKILL mid-put leaves (the listing hides it)
    assert store.unpublished() == []
    store.remove_unpublished()
    assert not dead.exists()


def test_object_keys_cannot_leave_the_repository(tmp_path: Path) -> None:
    from pgdr.errors import RepositoryError

    with pytest.raises(RepositoryError):
        SnapshotStore(Repository(tmp_path), "..").put_json("x", {})


# ---- end to end: pgdr backup / verify / restore --redis with an encrypted S3 repository ---------

@pytest.fixture(scope="module")
def server(rbase: Path) -> Iterator[RedisServer]:
    srv = RedisServer(rbase / "srv")
    pipe = srv.client(0).pipeline()
    for i in range(300):
        pipe.set(f"k:{i}", "v" * 40)
    pipe.set(CANARY, "canary value")
    pipe.execute()
    srv.client(3).hset("h3", mapping={f"f{i}": i for i in range(50)})
    yield srv
    srv.stop()


def _s3_config(rbase: Path, server: RedisServer, port: int, name: str, key_env: str | None = KEY_ENV) -> Path:
    repo = [f'url = "s3://{BUCKET}/{name}"', f'endpoint = "http://127.0.0.1:{port}"', 'region = "us-east-1"']
    if key_env:
        repo.append(f'encryption_key_env = "{key_env}"')
    return write_config(rbase / f"{name}.toml", rbase / f"{name}-work", f"""
[[redis]]
name = "c"
url = "{server.url()}"
data_dir = "{server.dir}"
""", extra="\n".join(repo) + f'\n[verify]\nscratch_dir = "{rbase / "scratch"}"\n')


def _env(passphrase: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if passphrase is not None:
        env[KEY_ENV] = passphrase
    return env


def test_encrypted_s3_repository_backup_verify_restore(rbase: Path, server: RedisServer,
                                                       moto: tuple[int, Any]) -> None:
    port, client = moto
    config = _s3_config(rbase, server, port, "e2e")
    env = _env("the right passphrase")
    done = run_cli("backup", "--redis", "c", config=config, env=env)
    assert done.returncode == 0, done.stderr

    # the bucket, read directly: the snapshot is there, sealed
    held = bucket_keys(client, "e2e/")
    snaps = sorted(k for k in held if k.startswith("e2e/redis/c/") and k.endswith(f"/{DATA}"))
    assert len(snaps) == 1
    snapshot_id = snaps[0].split("/")[3]
    assert f"e2e/redis/c/{snapshot_id}/{META}" in held and "e2e/pgdr-encryption.json" in held
    for key in held:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert CANARY not in body and b"REDIS0" not in body, key  # no RDB bytes, compressed or not
        if key.endswith(META):
            assert b"databases" not in body and b"redis_version" not in body
    # nothing of the snapshot left in the local working folder
    assert not [p for p in (rbase / "e2e-work").rglob("*") if p.is_file() and "redis" in p.parts]

    verified = run_cli("verify", "--redis", "c", "latest", config=config, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"e2e/redis/c/{snapshot_id}/verify.json" in bucket_keys(client, "e2e/")
    # status reads the same store: the snapshot and its verification are seen there
    status = run_cli("status", "--redis", "c", "--json", config=config, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    facts = json.loads(status.stdout)["redis"][0]
    assert facts["newest_snapshot"]["id"] == facts["newest_verified"]["id"] == snapshot_id

    target = rbase / "restored"
    rport = free_port()
    restored = run_cli("restore", "--redis", "c", "--target-dir", str(target), "--port", str(rport),
                       config=config, env=env)
    try:
        assert restored.returncode == 0, restored.stdout + restored.stderr
        import redis

        assert redis.Redis(port=rport, db=0).dbsize() == server.client(0).dbsize() == 301
        assert redis.Redis(port=rport, db=3).hlen("h3") == 50
        assert redis.Redis(port=rport, db=0).get(CANARY) == b"canary value"
    finally:
        stop_restored(target)

    # a wrong passphrase, and none: one line, exit 2, nothing written
    before = bucket_keys(client, "e2e/")
    for bad in ("not the passphrase", None):
        res = run_cli("verify", "--redis", "c", "latest", config=config, env=_env(bad))
        assert res.returncode == 2, res.stdout + res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert KEY_ENV in res.stderr
    assert bucket_keys(client, "e2e/") == before

    # one byte flipped in the bucket's object: verify fails (exit 1) and says why
    _flip("s3", rbase / "e2e", client, f"redis/c/{snapshot_id}/{DATA}")
    res = run_cli("verify", "--redis", "c", "latest", config=config, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "authentication" in res.stderr and "Traceback" not in res.stderr
    # and restore refuses to start anything from it
    res = run_cli("restore", "--redis", "c", "--target-dir", str(rbase / "restored-bad"), "--port",
                  str(free_port()), config=config, env=env)
    assert res.returncode == 1 and not (rbase / "restored-bad").exists()


def test_plain_s3_repository_catches_a_flipped_byte_by_sha256(rbase: Path, server: RedisServer,
                                                              moto: tuple[int, Any]) -> None:
    port, client = moto
    config = _s3_config(rbase, server, port, "plain", key_env=None)
    assert run_cli("backup", "--redis", "c", config=config).returncode == 0
    assert run_cli("verify", "--redis", "c", config=config).returncode == 0
    snapshot_id = next(k for k in bucket_keys(client, "plain/redis/c/") if k.endswith(DATA)).split("/")[3]
    _flip("s3", rbase / "plain", client, f"redis/c/{snapshot_id}/{DATA}")
    res = run_cli("verify", "--redis", "c", config=config)
    assert res.returncode == 1 and "sha256" in res.stderr, res.stdout + res.stderr


@pytest.fixture(scope="module")
def big(rbase: Path) -> Iterator[RedisServer]:
    """A Redis whose snapshot takes several 8 MiB multipart parts (incompressible values)."""
    srv = RedisServer(rbase / "big-srv")
    pipe = srv.client(0).pipeline()
    for i in range(24):
        pipe.set(f"big:{i}", os.urandom(1 << 20))
    pipe.execute()
    yield srv
    srv.stop()


def test_sigkill_mid_upload_to_s3_publishes_nothing(rbase: Path, big: RedisServer, moto: tuple[int, Any]) -> None:
    """pgdr SIGKILLed while the snapshot's multipart upload is in flight: the bucket lists
    no snapshot (nothing published), and the next backup publishes exactly one."""
    import signal
    import subprocess
    import sys
    import time

    port, client = moto
    config = _s3_config(rbase, big, port, "kill")
    env = _env("kill passphrase")
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup", "--redis", "c"],
                            env={**env, "PGDR_CONFIG": str(config)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed = False
    while proc.poll() is None:
        if client.list_multipart_uploads(Bucket=BUCKET, Prefix="kill/redis/c/").get("Uploads"):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(10)
    assert killed, "the backup finished before its upload could be caught in flight"
    assert not [k for k in bucket_keys(client, "kill/redis/c/") if k.endswith(f"/{META}")]
    res = run_cli("list", "--redis", "c", "--json", config=config, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr

    res = run_cli("backup", "--redis", "c", config=config, env=env)
    assert res.returncode == 0, res.stderr
    assert len({k.split("/")[3] for k in bucket_keys(client, "kill/redis/c/")}) == 1
    assert run_cli("verify", "--redis", "c", config=config, env=env).returncode == 0


def test_store_cut_mid_upload_fails_in_one_line_and_publishes_nothing(rbase: Path, big: RedisServer,
                                                                     moto: tuple[int, Any]) -> None:
    """The object store goes away (connections cut) inside the snapshot's upload: exit 1 with
    one line, the bucket lists no snapshot; once it is back, the next backup publishes one
    and removes unpublished data (a snapshot's object without its metadata)."""
    from tests.test_s3 import Proxy

    port, client = moto
    proxy = Proxy(port)
    try:
        config = _s3_config(rbase, big, proxy.port, "cut", key_env=None)
        proxy.cut_after = 12_000_000  # past the listing requests: inside the multipart upload
        failed = run_cli("backup", "--redis", "c", config=config, timeout=240)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1 and "object store" in failed.stderr, failed.stderr
        assert proxy.listener is None and proxy.sent > 12_000_000  # it really was cut mid-upload
        assert not [k for k in bucket_keys(client, "cut/redis/c/") if k.endswith(f"/{META}")]
        proxy.start()
        assert run_cli("list", "--redis", "c", "--json", config=config).stdout.strip() == "[]"
        # and what a backup killed between its data and its metadata would leave
        client.put_object(Bucket=BUCKET, Key=f"cut/redis/c/20200101T000000000Z/{DATA}", Body=b"half")
        again = run_cli("backup", "--redis", "c", "--json", config=config)
        assert again.returncode == 0, again.stderr
        new_id = json.loads(again.stdout)[0]["id"]
        assert {k.split("/")[3] for k in bucket_keys(client, "cut/redis/c/")} == {new_id}
    finally:
        proxy.cut()
