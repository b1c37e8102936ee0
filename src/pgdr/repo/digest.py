"""The digest of a backup's files: BLAKE3 for what pgdr writes, sha256 still read.

Every byte of a backup is hashed twice in its life at least: beside the copy (pgdr
backup follows the tar pg_basebackup writes) and while a restore or a verify extracts
it (the digest proves the bytes before they reach a data directory: server-side zstd
has no frame checksum). Both happen on the critical path of a 2-core machine, where any
CPU work beside pg_basebackup's stream slows it, even at nice 19 (measured: a
`nice -n 19 sha256sum` of 1.2 GB beside pg_basebackup made it 0.3-0.6 s slower).

BLAKE3 (the `blake3` package: the BLAKE3 team's bindings of the reference Rust
implementation, wheels for every common platform) is a cryptographic hash like sha256,
and took 0.19 s of CPU for a 1.2 GB base.tar.zst against sha256's 0.68 s with SHA-NI
(hashlib, OpenSSL). It releases the GIL while it hashes, as hashlib does.

Backups written before (pgdr.json format 1) record sha256: they are checked with it.
Redis snapshots record sha256 too (rdb/store.py DIGEST: snapshot.json names it in its
keys); they get their hasher here all the same, so hashing has one home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

WRITTEN = "blake3"  # what new backups record
ALGORITHMS = ("blake3", "sha256")
CHUNK = 4 << 20


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def hasher(algorithm: str = WRITTEN) -> Hasher:
    """A new running digest of `algorithm` (imported here: neither is needed before a
    copy or an extraction has started)."""
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    if algorithm == "sha256":
        import hashlib

        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r} (pgdr knows {', '.join(ALGORITHMS)})")


def file_digest(path: Path, algorithm: str = WRITTEN) -> str:
    """The hex digest of a whole file, read in CHUNK blocks into one buffer."""
    running = hasher(algorithm)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            running.update(view[:n])
    return running.hexdigest()
