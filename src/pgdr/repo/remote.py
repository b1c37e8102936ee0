"""A repository kept in an object store, and the local cache the rest of pgdr reads.

With `[repository] url = "s3://…"` (or `encryption_key_env`, which keeps the objects in
`<path>/objects`), the store is the repository and its listing is the truth: a backup
exists when `backups/<id>/pgdr.json` exists there (it is uploaded last), a WAL file when
`wal/<name>.zst` does. `path` is the local working folder: locks, the archiver's state and
spool, and a cache laid out exactly like a local repository, so list, status, verify,
restore and find-disaster work unchanged on it:

- `sync_catalog`: every complete backup's pgdr.json (+ verify.json), and the identity;
  cached backups the store no longer has are dropped;
- `sync_wal`: the archived WAL, fetched in parallel (decrypted; still zstd with its frame
  checksum, so a damaged segment is caught when read; one that fails authentication is
  cached empty, which reads as damaged);
- `fetch_backup`: a backup's files, each checked against pgdr.json's size and sha256 as
  it streams in; `purge_backup` drops them again after a verify or restore.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pgdr.errors import ConfigError, RepositoryError
from pgdr.pg.programs import RunAs
from pgdr.repo.layout import PARTIAL_SUFFIX, Repository
from pgdr.repo.store import ObjectInfo, ObjectMissing, Store

if TYPE_CHECKING:
    from pgdr.config import RepositoryConfig
    from pgdr.repo.manifest import BackupManifest
    from pgdr.repo.streamup import StreamingUpload

MANIFEST = "pgdr.json"
VERIFY = "verify.json"
LOCAL_OBJECTS = "objects"
FETCH_WORKERS = 8
T = TypeVar("T")


class BackupObjectDamaged(RepositoryError):
    """A backup file in the store does not match what its pgdr.json recorded."""


def open_store(cfg: RepositoryConfig, run_as: RunAs) -> Store | None:
    """The configured object store, or None for a plain local repository (today's layout)."""
    from pgdr.repo.store import LocalStore

    local_objects = cfg.path / LOCAL_OBJECTS
    if cfg.url is None and cfg.encryption_key_env is None:
        from pgdr.repo.crypto import ENCRYPTION_FILE

        if (local_objects / ENCRYPTION_FILE).exists() or (cfg.path / ENCRYPTION_FILE).exists():
            raise ConfigError(f"repository {cfg.path} is encrypted; set [repository] encryption_key_env "
                              "to the variable that holds its passphrase")
        if (cfg.path / CACHE_MARKER).exists():  # a cache is not a repository: its files are pruned
            raise ConfigError(f"{cfg.path} is the working folder of an object-store repository "
                              f"({(cfg.path / CACHE_MARKER).read_text().strip()}); set [repository] url")
        return None
    from pgdr.repo.crypto import open_encrypted

    if cfg.url is not None:
        from pgdr.repo.store import S3Store

        inner: Store = S3Store(cfg.url, cfg.endpoint, cfg.region)
    else:
        local_objects.mkdir(parents=True, exist_ok=True)
        inner = LocalStore(local_objects, run_as)
    claim_working_folder(cfg.path, inner.url)
    return open_encrypted(inner, cfg.encryption_key_env, cfg.path)


CACHE_MARKER = "pgdr-cache.json"


def claim_working_folder(path: Path, url: str) -> None:
    """The working folder's backups/ and wal/ are a cache that syncing prunes: refuse a folder
    that holds a local repository (its backups would be pruned as "not in the store") or the
    cache of another store."""
    import json

    marker = path / CACHE_MARKER
    try:
        owner = json.loads(marker.read_text()).get("cache_of")
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{marker} is unreadable; remove it if {path} is only pgdr's cache") from None
    if owner == url:
        return
    if owner is not None:
        raise ConfigError(f"{path} is the working folder of {owner}, not of {url}",
                          hint="give each repository its own [repository] path")
    holds = [*(path / "backups").glob("*"), *(path / "wal").glob("*.zst")]
    if holds:
        raise ConfigError(f"{path} holds a local repository ({holds[0].name} …); an object-store repository "
                          "needs its own working folder", hint="set [repository] path to a new folder")
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"cache_of": url}) + "\n")


def _parallel(fn: Callable[[T], None], items: list[T]) -> None:
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(items))) as pool:
        for _ in pool.map(fn, items):
            pass


def _write_local(path: Path, data: bytes, run_as: RunAs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o640)
    run_as.chown(tmp)
    os.replace(tmp, path)


def _store(repo: Repository) -> Store:
    assert repo.store is not None
    return repo.store


def backup_objects(store: Store) -> dict[str, dict[str, ObjectInfo]]:
    """backups/<id>/<file> in the store, by backup id."""
    out: dict[str, dict[str, ObjectInfo]] = {}
    for obj in store.listing("backups/"):
        parts = obj.key.split("/", 2)
        if len(parts) == 3:
            out.setdefault(parts[1], {})[parts[2]] = obj
    return out


def sync_catalog(repo: Repository) -> None:
    """The local cache's backups/ and identity made to match the store's listing."""
    store = _store(repo)
    repo.ensure()
    listing = backup_objects(store)
    complete = {bid: files for bid, files in listing.items() if MANIFEST in files}
    for entry in list(repo.backups_dir.iterdir()):
        if entry.is_dir() and not entry.name.endswith(PARTIAL_SUFFIX) and entry.name not in complete:
            shutil.rmtree(entry, ignore_errors=True)
    todo = [(bid, name) for bid, files in complete.items() for name in (MANIFEST, VERIFY)
            if name in files and (name == VERIFY or not (repo.backups_dir / bid / name).exists())]

    def one(item: tuple[str, str]) -> None:
        bid, name = item
        folder = repo.backups_dir / bid
        folder.mkdir(exist_ok=True)
        repo.run_as.chown(folder)
        try:
            data = store.get_bytes(f"backups/{bid}/{name}")
        except ObjectMissing:
            return
        except RepositoryError as exc:
            if isinstance(exc, OSError):
                raise
            data = f"damaged in the store: {exc.message}".encode()  # listed as damaged, not left out
        _write_local(folder / name, data, repo.run_as)

    _parallel(one, todo)
    if not repo.identity_path.exists():
        fetch_identity(repo)


def fetch_identity(repo: Repository) -> dict[str, object] | None:
    """pgdr-repo.json from the store into the working folder (None when the store has none)."""
    import json

    try:
        data = _store(repo).get_bytes(repo.identity_path.name)
    except ObjectMissing:
        return None
    repo.root.mkdir(parents=True, exist_ok=True)
    _write_local(repo.identity_path, data, repo.run_as)
    try:
        return dict(json.loads(data))
    except (ValueError, TypeError):
        raise RepositoryError(f"pgdr-repo.json in {_store(repo).url} is unreadable") from None


def sync_wal(repo: Repository) -> int:
    """Fetch archived WAL the cache lacks (in parallel); drop what the store no longer has.
    Returns how many files were fetched."""
    store = _store(repo)
    repo.ensure()
    names = {o.key[4:] for o in store.listing("wal/") if o.key.endswith(".zst") and "/" not in o.key[4:]}
    local = {p.name for p in repo.wal_dir.glob("*.zst")}
    for gone in local - names:
        (repo.wal_dir / gone).unlink(missing_ok=True)
    todo = sorted(names - local)

    def one(name: str) -> None:
        try:
            data = store.get_bytes(f"wal/{name}")
        except ObjectMissing:
            return
        except RepositoryError as exc:
            if isinstance(exc, OSError):
                raise
            data = b""  # failed authentication: reads as a damaged segment, named by the reader
        _write_local(repo.wal_dir / name, data, repo.run_as)

    _parallel(one, todo)
    return len(todo)


def fetch_backup(repo: Repository, backup_id: str) -> Path:
    """The backup's files in the cache, each checked against pgdr.json as it streams in."""
    from pgdr.repo.manifest import read_manifest

    store = _store(repo)
    folder = repo.backups_dir / backup_id
    manifest = read_manifest(folder)
    listing = backup_objects(store).get(backup_id, {})
    names = sorted(n for n in listing if n not in (MANIFEST, VERIFY))

    def one(name: str) -> None:
        dest = folder / name
        entry = manifest.files.get(name)
        if entry is not None and dest.is_file() and dest.stat().st_size == entry.size:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        digest, size = hashlib.sha256(), 0
        try:
            with store.open_read(f"backups/{backup_id}/{name}") as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        except RepositoryError as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise
            raise BackupObjectDamaged(f"backup {backup_id}: {exc.message}", hint=exc.hint) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if entry is not None and (size != entry.size or digest.hexdigest() != entry.sha256):
            tmp.unlink(missing_ok=True)
            raise BackupObjectDamaged(f"backup {backup_id}: {name} in {store.url} does not match pgdr.json "
                                      f"(size {size}, sha256 {digest.hexdigest()[:12]}…; recorded {entry.size}, "
                                      f"{entry.sha256[:12]}…)", hint="this backup cannot be trusted; use another")
        os.chmod(tmp, 0o640)
        repo.run_as.chown(tmp)
        os.replace(tmp, dest)

    missing = sorted(set(manifest.files) - set(names))
    if missing:
        raise BackupObjectDamaged(f"backup {backup_id}: {missing[0]} is missing from {store.url}")
    _parallel(one, names)
    for link in getattr(manifest, "chain", []):  # an incremental backup's parents (pg_combinebackup)
        if (repo.backups_dir / link / MANIFEST).exists():
            fetch_backup(repo, link)
    return folder


_synced: set[int] = set()


def sync_catalog_once(repo: Repository) -> None:
    """sync_catalog, once per process and store."""
    if id(repo.store) not in _synced:
        sync_catalog(repo)
        _synced.add(id(repo.store))


def drop_cache(repo: Repository) -> None:
    """Every cached backup file; for an encrypted repository also the decrypted WAL."""
    if repo.backups_dir.is_dir():
        for entry in repo.backups_dir.iterdir():
            if not entry.name.endswith(PARTIAL_SUFFIX):  # a backup being written: not a cache
                purge_backup(repo, entry.name)
    if encrypted(repo) and repo.wal_dir.is_dir():
        for path in repo.wal_dir.glob("*.zst"):
            path.unlink(missing_ok=True)


def encrypted(repo: Repository) -> bool:
    from pgdr.repo.crypto import EncryptedStore

    return isinstance(repo.store, EncryptedStore)


def purge_backup(repo: Repository, backup_id: str) -> None:
    """Drop a backup's cached files (pgdr.json, verify.json and backup_manifest stay)."""
    folder = repo.backups_dir / backup_id
    if repo.store is None or not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in (MANIFEST, VERIFY, "backup_manifest"):  # an incremental's parent needs it
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def push_verification(repo: Repository, backup_id: str) -> None:
    if repo.store is not None:
        path = repo.backups_dir / backup_id / VERIFY
        repo.store.put_bytes(f"backups/{backup_id}/{VERIFY}", path.read_bytes())


def upload_files(store: Store, folder: Path, backup_id: str, skip: set[str], workers: int = 2) -> None:
    """Every file of a finished backup folder but pgdr.json and those in skip."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                   and p.relative_to(folder).as_posix() not in skip)

    def one(path: Path) -> None:
        with open(path, "rb") as fh:
            store.put_stream(f"backups/{backup_id}/{path.relative_to(folder).as_posix()}", fh)

    if files:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(one, files):
                pass


def publish_to_store(repo: Repository, folder: Path, backup_id: str, manifest: BackupManifest,
                     stream: StreamingUpload | None) -> BackupManifest:
    """The rest of the files go up while the streamed tars finish; pgdr.json (with the size and
    sha256 of the bytes actually sent) goes last: only then does the backup exist in the store."""
    from pgdr.fsutil import write_json_durable
    from pgdr.repo.manifest import FileEntry
    from pgdr.repo.streamup import STREAMED

    store = _store(repo)
    streamed = {p.name for p in folder.iterdir() if STREAMED.match(p.name)} if stream is not None else set()
    with ThreadPoolExecutor(max_workers=1) as pool:
        rest = pool.submit(upload_files, store, folder, backup_id, streamed)
        try:
            sent = stream.finish() if stream is not None else {}
        finally:
            rest.exception()  # wait for the other uploads, whatever happened
        rest.result()  # and raise their failure, if any
    entries = {name: FileEntry(size=size, sha256=digest) for name, (size, digest) in sent.items()}
    files = {**manifest.files, **entries}
    sealed = manifest.model_copy(update={"files": files, "bytes_on_disk": sum(f.size for f in files.values())}).seal()
    write_json_durable(folder / MANIFEST, sealed.model_dump(mode="json"))
    store.put_bytes(f"backups/{backup_id}/{MANIFEST}", (folder / MANIFEST).read_bytes())
    return sealed


def remove_incomplete(store: Store) -> list[str]:
    """Objects of backups that never got their pgdr.json (killed, or the store went away):
    call only under the backup lock, when no backup is uploading."""
    removed = []
    for bid, files in backup_objects(store).items():
        if MANIFEST not in files:
            store.delete([f"backups/{bid}/{name}" for name in files])
            removed.append(bid)
    return removed


def delete_backup(store: Store, backup_id: str) -> None:
    """pgdr.json first: from then on the backup is not listed, whatever else remains."""
    files = backup_objects(store).get(backup_id, {})
    if MANIFEST in files:
        store.delete([f"backups/{backup_id}/{MANIFEST}"])
    store.delete([f"backups/{backup_id}/{name}" for name in files if name != MANIFEST])
