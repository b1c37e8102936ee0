"""Read an RDB file's structure: how many keys each database holds, and its header.

The key counts in a snapshot's metadata come from the snapshot itself, not from INFO
on a server that kept taking writes after the fork: verify then compares what a
scratch redis-server loaded with what the file says it holds. The scan walks every
entry (skipping values) and stops with RdbDamaged at a truncation or an unknown byte,
which is a structural check independent of redis-check-rdb's CRC.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgdr.errors import PgdrError

# opcodes (src/rdb.h)
_FUNCTION2, _FUNCTION_PRE_GA, _MODULE_AUX, _IDLE, _FREQ = 245, 246, 247, 248, 249
_AUX, _RESIZEDB, _EXPIRETIME_MS, _EXPIRETIME, _SELECTDB, _EOF = 250, 251, 252, 253, 254, 255
# value types whose whole value is one string (ziplist, listpack, intset, zipmap encodings)
_ONE_STRING = {0, 9, 10, 11, 12, 13, 16, 17, 20}
_STREAMS = {15: 1, 19: 2, 21: 3}


class RdbDamaged(PgdrError):
    """The file is not a complete, well-formed RDB."""


@dataclass
class DbCount:
    keys: int = 0
    resize_keys: int | None = None  # what RESIZEDB announced
    expiry_ms: list[int] = field(default_factory=list)  # sorted expiry times of the keys with a TTL

    @property
    def expires(self) -> int:
        return len(self.expiry_ms)

    def expired_by(self, at_ms: int) -> int:
        """Keys whose TTL has passed at at_ms (redis drops them when it loads the file)."""
        return bisect.bisect_right(self.expiry_ms, at_ms)


@dataclass
class RdbSummary:
    version: int
    aux: dict[str, str]
    databases: dict[int, DbCount]
    bytes_read: int

    def key_counts(self) -> dict[str, dict[str, int]]:
        return {str(db): {"keys": c.keys, "expires": c.expires} for db, c in sorted(self.databases.items())}


class _Reader:
    """Reads an RDB mapped into memory: one index, no call per byte into the file layer."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise RdbDamaged(f"RDB file ends early (truncated at byte {self.end})")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise RdbDamaged(f"RDB file ends early (truncated at byte {self.end})")
        self.pos += n

    def byte(self) -> int:
        if self.pos >= self.end:
            raise RdbDamaged(f"RDB file ends early (truncated at byte {self.end})")
        value: int = self.data[self.pos]
        self.pos += 1
        return value

    def length(self) -> tuple[int, bool]:
        """(length, is_encoded): RDB's length encoding."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return int(struct.unpack(">I", self.read(4))[0]), False
        if first == 0x81:
            return int(struct.unpack(">Q", self.read(8))[0]), False
        raise RdbDamaged(f"bad length byte 0x{first:02x} at byte {self.pos - 1}")

    def plain_length(self) -> int:
        n, encoded = self.length()
        if encoded:
            raise RdbDamaged(f"unexpected encoded length at byte {self.pos}")
        return n

    def string(self, keep: bool = False) -> bytes | None:
        n, encoded = self.length()
        if not encoded:
            data = self.read(n) if keep else None
            if not keep:
                self.skip(n)
            return data
        if n in (0, 1, 2):  # int8/16/32
            raw = self.read(1 << n)
            return str(int.from_bytes(raw, "little", signed=True)).encode() if keep else None
        if n == 3:  # LZF: compressed length, plain length, bytes
            clen = self.plain_length()
            self.plain_length()
            self.skip(clen)
            return b"" if keep else None
        raise RdbDamaged(f"unknown string encoding {n} at byte {self.pos}")


def _skip_value(r: _Reader, vtype: int) -> None:
    if vtype in _ONE_STRING:
        r.string()
    elif vtype in (1, 2):  # list, set
        for _ in range(r.plain_length()):
            r.string()
    elif vtype == 3:  # zset: member, score as a length-prefixed string (253..255 special)
        for _ in range(r.plain_length()):
            r.string()
            n = r.byte()
            if n < 253:
                r.skip(n)
    elif vtype == 4:  # hash
        for _ in range(r.plain_length() * 2):
            r.string()
    elif vtype == 5:  # zset2: member, binary double
        for _ in range(r.plain_length()):
            r.string()
            r.skip(8)
    elif vtype == 14:  # quicklist of ziplists
        for _ in range(r.plain_length()):
            r.string()
    elif vtype == 18:  # quicklist2: (container, listpack)
        for _ in range(r.plain_length()):
            r.plain_length()
            r.string()
    elif vtype in _STREAMS:
        _skip_stream(r, _STREAMS[vtype])
    else:
        raise RdbDamaged(f"value type {vtype} at byte {r.pos} is not understood (a module type?)")


def _skip_stream(r: _Reader, v: int) -> None:
    for _ in range(r.plain_length()):  # listpacks: master id, listpack
        r.string()
        r.string()
    for _ in range(3 + (5 if v >= 2 else 0)):  # length, last id; first id, max deleted id, entries added
        r.plain_length()
    for _ in range(r.plain_length()):  # consumer groups
        r.string()
        r.plain_length()
        r.plain_length()
        if v >= 2:
            r.plain_length()
        for _ in range(r.plain_length()):  # group PEL: id, delivery time, count
            r.skip(16 + 8)
            r.plain_length()
        for _ in range(r.plain_length()):  # consumers
            r.string()
            r.skip(8 + (8 if v >= 3 else 0))
            for _ in range(r.plain_length()):
                r.skip(16)


def scan(path: Path) -> RdbSummary:
    """Walk the file; count keys (and keys with a TTL, with their expiry times) per
    database. RdbDamaged when it is not a complete RDB."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise RdbDamaged("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _walk(_Reader(data))


def _walk(r: _Reader) -> RdbSummary:
    magic = r.read(9)
    if magic[:5] != b"REDIS" or not magic[5:].isdigit():
        raise RdbDamaged("not an RDB file (no REDIS header)")
    version = int(magic[5:])
    aux: dict[str, str] = {}
    dbs: dict[int, DbCount] = {}
    current = dbs.setdefault(0, DbCount())
    expire: int | None = None
    while True:
        op = r.byte()
        if op == _EOF:
            break
        if op == _AUX:
            key = r.string(keep=True) or b""
            value = r.string(keep=True) or b""
            aux[key.decode(errors="replace")] = value.decode(errors="replace")
        elif op == _SELECTDB:
            current = dbs.setdefault(r.plain_length(), DbCount())
        elif op == _RESIZEDB:
            current.resize_keys = r.plain_length()
            r.plain_length()
        elif op == _EXPIRETIME_MS:
            expire = int(struct.unpack("<q", r.read(8))[0])
        elif op == _EXPIRETIME:
            expire = int(struct.unpack("<i", r.read(4))[0]) * 1000
        elif op == _IDLE:
            r.plain_length()
        elif op == _FREQ:
            r.byte()
        elif op == _FUNCTION2:
            r.string()
        elif op in (_MODULE_AUX, _FUNCTION_PRE_GA):
            raise RdbDamaged(f"opcode {op} (module data / pre-GA functions) at byte {r.pos} is not understood")
        else:
            r.string()  # the key
            _skip_value(r, op)
            current.keys += 1
            if expire is not None:
                current.expiry_ms.append(expire)
            expire = None
    if version >= 5:
        r.read(8)  # CRC64 (checked by redis-check-rdb)
    # an empty database 0 that was only the starting point is not a database
    if not dbs[0].keys and dbs[0].resize_keys is None:
        del dbs[0]
    for count in dbs.values():
        count.expiry_ms.sort()
    return RdbSummary(version, aux, dbs, r.pos)
