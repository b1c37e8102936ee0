"""Proving an extracted physical backup before any server starts on it.

Two questions, both answered from what PostgreSQL itself wrote, not from pgdr.json:
1. pg_verifybackup: every file of the extracted data directory (tablespaces included,
   through the rewritten links) against backup_manifest, and the WAL the backup
   carries parsed from its start to its end.
2. cross_check: pgdr.json's LSNs, timeline, system identifier, segment size and stop
   time against backup_manifest, backup_label and pg_control (pg_controldata). An
   edited pgdr.json (whose own checksum was also forged, or which predates it) fails
   here, naming the field.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pgdr.pg.lsn import parse_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import BackupManifest
from pgdr.restore.extract import TABLESPACE_DIR, BackupDamaged

# Files pgdr itself changes or adds in a restored data directory before pg_verifybackup.
IGNORED = ("tablespace_map", TABLESPACE_DIR)


@dataclass
class Mismatch:
    field: str
    recorded: str
    actual: str
    source: str

    def describe(self) -> str:
        return f"pgdr.json {self.field} is {self.recorded}, {self.source} says {self.actual}"


# Split pg_verifybackup in two above this many bytes of files, when there are two CPUs.
SPLIT_ABOVE = 256 << 20
# ... unless the half of the big files would need more -i arguments than this.
SPLIT_MAX_IGNORED = 4000


def verify_backup_files(backup_dir: Path, data_dir: Path, programs: Programs) -> tuple[bool, list[str]]:
    """pg_verifybackup on the extracted directory; (ok, its output lines). A directory
    rebuilt from an incremental chain is checked against the manifest pg_combinebackup
    wrote for it (restore/combine.py), not the incremental backup's own.

    pg_verifybackup reads and checksums every byte on one core (0.37 s for pgbench scale
    100's 1.5 GB here, between the extraction and the server's start, with nothing
    beside it). With two CPUs and a large backup it runs as two pg_verifybackups side by
    side (_halves): one checks the biggest files that make up half the bytes, the other
    everything else and the WAL; each is told to ignore exactly what the other checks,
    so together they check what one would, and both must pass."""
    combined = data_dir / "backup_manifest"
    manifest = combined if combined.is_file() else backup_dir / "backup_manifest"
    args = ["-m", str(manifest)]
    for name in IGNORED:
        args += ["-i", name]
    halves = _halves(manifest, data_dir) if (os.cpu_count() or 1) >= 2 else None
    runs = ([["-w", str(data_dir / "pg_wal"), *halves[0]], ["--no-parse-wal", *halves[1]]]
            if halves else [["-w", str(data_dir / "pg_wal")]])

    def one(extra: list[str]) -> tuple[bool, list[str]]:
        res = programs.run("pg_verifybackup", [*args, *extra, str(data_dir)], ok_codes=(0, 1), timeout=3600)
        return res.returncode == 0, [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]

    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="pgdr-verifybackup") as pool:
        results = list(pool.map(one, runs))
    failed = [lines for ok, lines in results if not ok]
    if failed:
        return False, [ln for lines in failed for ln in lines]
    return True, results[0][1]


def _halves(manifest: Path, data_dir: Path) -> tuple[list[str], list[str]] | None:
    """The -i arguments of two pg_verifybackups that together check every file once:
    (for the one that checks all but the biggest files, for the one that checks only
    those), or None when splitting is not worth it or not possible."""
    try:
        files = json.loads(manifest.read_bytes())["Files"]
        sizes = {f["Path"]: int(f["Size"]) for f in files}  # an Encoded-Path: KeyError
    except (OSError, ValueError, KeyError, TypeError):
        return None
    total = sum(sizes.values())
    if total < SPLIT_ABOVE:
        return None
    big: set[str] = set()
    taken = 0
    for path, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if taken >= total // 2:
            break
        big.add(path)
        taken += size
    # The big files' folders, up to the data directory: everything else in them is the
    # other run's (on disk or in the manifest, so an extra file is reported by that one).
    folders = {""}
    for path in big:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    entries: set[str] = {p for p in sizes if p.rpartition("/")[0] in folders}
    for folder in folders:
        try:
            entries.update(f"{folder}/{n}" if folder else n for n in os.listdir(data_dir / folder))
        except OSError:
            return None
    others = sorted(e for e in entries if e not in big and e not in folders)
    if len(others) > SPLIT_MAX_IGNORED:
        return None
    return ([a for p in sorted(big) for a in ("-i", p)], [a for p in others for a in ("-i", p)])


def require_verified(backup_dir: Path, data_dir: Path, programs: Programs) -> str:
    ok, lines = verify_backup_files(backup_dir, data_dir, programs)
    if not ok:
        bad = [ln for ln in lines if "error" in ln.lower()] or lines
        raise BackupDamaged(f"pg_verifybackup: {bad[0] if bad else 'failed'}",
                            hint="the backup is damaged; restore another one with --backup")
    return lines[-1] if lines else "backup successfully verified"


def _label(data_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = (data_dir / "backup_label").read_text()
    except OSError as exc:
        raise BackupDamaged(f"the backup has no readable backup_label: {exc.strerror}") from None
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _controldata(data_dir: Path, programs: Programs) -> dict[str, str]:
    res = programs.run("pg_controldata", [str(data_dir)], timeout=60)
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def cross_check(backup_dir: Path, data_dir: Path, manifest: BackupManifest,
                programs: Programs) -> list[Mismatch]:
    found: list[Mismatch] = []

    def compare(field: str, recorded: object, actual: object, source: str) -> None:
        if str(recorded) != str(actual):
            found.append(Mismatch(field, str(recorded), str(actual), source))

    try:
        ranges = json.loads((backup_dir / "backup_manifest").read_text())["WAL-Ranges"]
    except (OSError, ValueError, KeyError) as exc:
        raise BackupDamaged(f"backup {backup_dir.name}: unreadable backup_manifest: {exc}") from None
    compare("start_lsn", parse_lsn(manifest.start_lsn), parse_lsn(ranges[0]["Start-LSN"]), "backup_manifest")
    compare("stop_lsn", parse_lsn(manifest.stop_lsn), parse_lsn(ranges[-1]["End-LSN"]), "backup_manifest")
    compare("timeline", manifest.timeline, int(ranges[-1]["Timeline"]), "backup_manifest")

    label = _label(data_dir)
    start = label.get("START WAL LOCATION", "").split(" ")[0]
    if start:
        compare("start_lsn", parse_lsn(manifest.start_lsn), parse_lsn(start), "backup_label")
    if label.get("START TIMELINE"):
        compare("timeline", int(ranges[0]["Timeline"]), int(label["START TIMELINE"]), "backup_label")
    started = label.get("START TIME")
    if started:
        label_start = datetime.strptime(started.replace(" UTC", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) \
            if started.endswith("UTC") else None
        if label_start is not None:
            low = label_start - timedelta(seconds=2)
            high = label_start + timedelta(seconds=manifest.duration_s + 5)
            if not low <= manifest.stop_time <= high:
                found.append(Mismatch("stop_time", manifest.stop_time.isoformat(),
                                      f"a backup started {label_start.isoformat()} "
                                      f"and lasting {manifest.duration_s:.0f}s", "backup_label"))

    control = _controldata(data_dir, programs)
    compare("system_identifier", manifest.system_identifier,
            control.get("Database system identifier"), "pg_control")
    seg = control.get("Bytes per WAL segment")
    if seg:
        compare("wal_segment_size", manifest.wal_segment_size, int(seg), "pg_control")
    return found


def require_consistent(backup_dir: Path, data_dir: Path, manifest: BackupManifest,
                       programs: Programs) -> None:
    mismatches = cross_check(backup_dir, data_dir, manifest, programs)
    if mismatches:
        first = mismatches[0]
        more = f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise BackupDamaged(f"backup {manifest.id}: {first.describe()}{more}",
                            hint="pgdr.json was edited or belongs to another backup; do not trust it")
