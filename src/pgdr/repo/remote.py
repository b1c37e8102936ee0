"""A repository kept in an object store, and the local cache the rest of pgdr reads.

With `[repository] url = "s3://…"` (or `encryption_key_env`, which keeps the objects in
`<path>/objects`), the store is the repository and its listing is the truth: a backup
exists when `backups/<id>/pgdr.json` exists there (it is uploaded last), a WAL file when
`wal/<name>.zst` does. `path` is the local working folder: locks, the archiver's state and
spool, and a cache laid out exactly like a local repository, so list, status, verify,
restore and find-disaster work unchanged on it:

- `sync_catalog`: every complete backup's pgdr.json (+ verify.json), and the identity;
  cached backups the store no longer has are dropped;
- `sync_wal`: the archived WAL a command needs (`WalRange`: a backup's start onward, up
  to a target), fetched in parallel (decrypted; still zstd with its frame
  checksum, so a damaged segment is caught when read; one that fails authentication is
  cached empty, which reads as damaged);
- `fetch_backup`: a backup's files, each checked against pgdr.json's size and digest as
  it streams in; `purge_backup` drops them again after a verify or restore.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pgdr.errors import ConfigError, RepositoryError, UsageError
from pgdr.pg.lsn import Segment, parse_lsn, parse_segment_name
from pgdr.pg.programs import RunAs
from pgdr.repo import digest
from pgdr.repo.layout import CACHE_MARKER as CACHE_MARKER
from pgdr.repo.layout import LOCAL_OBJECTS as LOCAL_OBJECTS
from pgdr.repo.layout import PARTIAL_SUFFIX, Repository, refuse_if_not_plain
from pgdr.repo.store import ObjectInfo, ObjectMissing, Store

if TYPE_CHECKING:
    from pgdr.config import RepositoryConfig
    from pgdr.repo.manifest import BackupManifest
    from pgdr.repo.streamup import StreamingUpload
    from pgdr.repo.wal import ArchivedFile
    from pgdr.restore.recovery import RecoveryTarget
    from pgdr.restore.walcheck import ArchiveCheck
    from pgdr.restore.walscan import Bound

MANIFEST = "pgdr.json"
VERIFY = "verify.json"
FETCH_WORKERS = 8
T = TypeVar("T")


class BackupObjectDamaged(RepositoryError):
    """A backup file in the store does not match what its pgdr.json recorded."""


def open_store(cfg: RepositoryConfig, run_as: RunAs) -> Store | None:
    """The configured object store, or None for a plain local repository (today's layout)."""
    from pgdr.repo.store import LocalStore

    local_objects = cfg.path / LOCAL_OBJECTS
    if cfg.url is None and cfg.encryption_key_env is None:
        refuse_if_not_plain(cfg.path)
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


def _get_or_damaged(store: Store, key: str, damaged: Callable[[str], bytes]) -> bytes | None:
    """An object's bytes; None when it vanished since the listing; `damaged(why)` when the
    store answered but the object failed its check (so the reader names it). A store that
    cannot be reached (OSError) still raises."""
    try:
        return store.get_bytes(key)
    except ObjectMissing:
        return None
    except RepositoryError as exc:
        if isinstance(exc, OSError):
            raise
        return damaged(exc.message)


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
        # an object failing authentication is cached as unparseable: listed as damaged, not left out
        data = _get_or_damaged(store, f"backups/{bid}/{name}", lambda why: f"damaged in the store: {why}".encode())
        if data is not None:
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


@dataclass(frozen=True)
class WalRange:
    """Which archived segments a command needs: segment numbers start..end (inclusive; None
    is open) on timeline min_timeline or later. History files are always fetched (tiny, and
    the timeline path needs them); segments=False fetches nothing else."""

    start: int | None = None
    end: int | None = None
    min_timeline: int | None = None
    segments: bool = True

    def wants(self, seg: Segment) -> bool:
        return (self.segments and (self.start is None or seg.segno >= self.start)
                and (self.end is None or seg.segno <= self.end)
                and (self.min_timeline is None or seg.timeline >= self.min_timeline))


ALL_WAL = WalRange()


def wal_listing(repo: Repository) -> dict[str, int]:
    """The store's archived WAL files (name without .zst -> object size): the truth."""
    return {o.key[4:-4]: o.size for o in _store(repo).listing("wal/")
            if o.key.endswith(".zst") and "/" not in o.key[4:]}


def sync_wal(repo: Repository, wanted: WalRange = ALL_WAL) -> int:
    """Fetch the archived WAL in `wanted` the cache lacks (in parallel); drop what the store
    no longer has. Returns how many files were fetched."""
    store = _store(repo)
    repo.ensure()
    names = {f"{n}.zst" for n in wal_listing(repo)}
    local = {p.name for p in repo.wal_dir.glob("*.zst")}
    for gone in local - names:
        (repo.wal_dir / gone).unlink(missing_ok=True)
    size = repo.wal_segment_size

    def needed(name: str) -> bool:
        seg = parse_segment_name(name[:-4], size)
        return seg is None or wanted.wants(seg)  # history (and any other) files always

    todo = sorted(n for n in names - local if needed(n))

    def one(name: str) -> None:
        # failed authentication: cached empty, so it reads as a damaged segment, named by the reader
        data = _get_or_damaged(store, f"wal/{name}", lambda why: b"")
        if data is not None:
            _write_local(repo.wal_dir / name, data, repo.run_as)

    _parallel(one, todo)
    return len(todo)


def listed_files(repo: Repository) -> list[ArchivedFile]:
    """The archive's files as the store lists them (expire decides from names and sizes)."""
    from pgdr.repo.wal import ArchivedFile

    return sorted((ArchivedFile(name, repo.wal_dir / f"{name}.zst", size)
                   for name, size in wal_listing(repo).items()), key=lambda f: f.name)


def listed_segments(repo: Repository) -> list[Segment]:
    size = repo.wal_segment_size
    segs = (parse_segment_name(name, size) for name in wal_listing(repo))
    return sorted(s for s in segs if s is not None)


def check_listing(repo: Repository, from_segno: int) -> tuple[ArchiveCheck, list[Segment]]:
    """The archive's continuity from from_segno on the newest timeline's path, from the
    store's listing (plus finished segments still in the local spool) and the history files:
    no segment is read, so damage inside one is found by verify and restore, not here."""
    from pgdr.repo.timelines import TimelineHistory, histories, newest
    from pgdr.repo.wal import WalArchive
    from pgdr.restore.walcheck import ArchiveCheck

    sync_wal(repo, WalRange(segments=False))
    size = repo.wal_segment_size
    archive = WalArchive(repo)
    segments = sorted(set(listed_segments(repo)) | set(archive.waiting()))
    known = histories(archive)
    for seg in segments:
        known.setdefault(seg.timeline, TimelineHistory(seg.timeline))
    history = newest(known)
    path = sorted({s.segno for s in segments
                   if s.segno >= from_segno and history.timeline_at(s.segno, size) == s.timeline})
    result = ArchiveCheck(history.tli, checked=len(path))

    def name(segno: int) -> str:
        return Segment(history.timeline_at(segno, size), segno).name(size)

    if path:
        result.first, result.last = name(path[0]), name(path[-1])
    gaps = [(from_segno, path[0] - 1)] if path and path[0] > from_segno else []
    gaps += [(a + 1, b - 1) for a, b in zip(path, path[1:], strict=False) if b > a + 1]
    for low, high in gaps:
        result.missing.append(name(low))
        result.gaps.append({"from": name(low), "to": name(high), "segments": high - low + 1})
        result.missing_count += high - low + 1
    return result, segments


def restore_range(repo: Repository, backup_id: str | None, target: RecoveryTarget) -> WalRange:
    """The WAL a restore toward target needs: from the start of the backup it will use (the
    one given, else each backup the choice could fall on: the newest ending before the
    target, and the newest such one not known to be bad), its timeline and later ones, up
    to an LSN target's segment. An xid or restore-point target is searched for in the whole
    archive from the oldest backup on."""
    from pgdr.repo.manifest import find_backup, list_backups
    from pgdr.repo.records import known_bad
    from pgdr.restore.pitr import parse_time

    size = repo.wal_segment_size
    physical = list_backups(repo, "physical")
    end: int | None = None
    if backup_id is not None:
        given = find_backup(repo, backup_id)
        if given.kind != "physical":
            return WalRange(segments=False)
        candidates = [given]
    elif target.kind in ("xid", "name"):
        candidates = physical[:1]
    else:
        try:
            when = parse_time(target.value) if target.kind == "time" and target.value else None
            lsn = parse_lsn(target.value) if target.kind == "lsn" and target.value else None
        except (ValueError, RepositoryError, UsageError):
            return WalRange(segments=False)  # the restore refuses the target with its own message
        ends = [b for b in physical if (when is None or b.stop_time <= when)
                and (lsn is None or parse_lsn(b.stop_lsn) <= lsn)]
        good = [b for b in ends if not known_bad(repo, b.id)]
        candidates = [*ends[-1:], *good[-1:]]
    if target.kind == "lsn" and target.value:
        try:
            end = parse_lsn(target.value) // size + 1  # the record at the target may cross into the next
        except ValueError:
            end = None
    if not candidates:
        return WalRange(segments=False)  # no backup fits: the restore says so, reading no WAL
    first = min(candidates, key=lambda b: parse_lsn(b.start_lsn))
    return WalRange(parse_lsn(first.start_lsn) // size, end, min(b.timeline for b in candidates))


def scan_range(repo: Repository, since: Bound | None, until: Bound | None) -> WalRange:
    """find-disaster: the whole archive, as the local path scans (toward the newest
    timeline), narrowed by LSN bounds, which name their segments; a time bound is found by
    reading the WAL itself (walscan._window), so it narrows nothing here."""
    size = repo.wal_segment_size
    return WalRange(since.lsn // size if since is not None and since.lsn is not None else None,
                    # +1: a record crossing out of the last segment is read from the next
                    until.lsn // size + 1 if until is not None and until.lsn is not None else None)


def backup_range(repo: Repository, backup_id: str) -> WalRange:
    """Verify: the backup's start to the archive's end on its timeline and later ones."""
    from pgdr.repo.manifest import find_backup

    backup = find_backup(repo, backup_id)
    if backup.kind != "physical":
        return WalRange(segments=False)
    return WalRange(parse_lsn(backup.start_lsn) // repo.wal_segment_size, None, backup.timeline)


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
        running, size = digest.hasher(manifest.algorithm_of(name)), 0
        try:
            with store.open_read(f"backups/{backup_id}/{name}") as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    running.update(block)
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
        if entry is not None and (size != entry.size or running.hexdigest() != entry.digest):
            tmp.unlink(missing_ok=True)
            raise BackupObjectDamaged(f"backup {backup_id}: {name} in {store.url} does not match pgdr.json "
                                      f"(size {size}, {entry.algorithm} {running.hexdigest()[:12]}…; recorded "
                                      f"{entry.size}, {entry.digest[:12]}…)",
                                      hint="this backup cannot be trusted; use another")
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
    digest of the bytes actually sent) goes last: only then does the backup exist in the store."""
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
    entries = {name: FileEntry.of(size, hexdigest) for name, (size, hexdigest) in sent.items()}
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
