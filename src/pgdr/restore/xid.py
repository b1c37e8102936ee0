"""Transaction ids as people give them, and their epoch.

WAL records, pg_waldump and pg_prepared_xacts carry 32-bit xids, which wrap around;
`txid_current()` / `pg_current_xact_id()` return the same xid with its epoch (the number
of wraparounds) in the high 32 bits: 4294967296 * epoch + xid. Both forms are accepted
wherever pgdr takes an xid. Given with its epoch, an xid matches only a transaction of
that epoch (found from the nearest checkpoint record's nextXid, which carries it);
without, it matches by its 32 bits, as PostgreSQL's recovery_target_xid does (which
keeps only the low 32 bits of what it is given), and pgdr refuses it when the archive
holds more than one transaction with those 32 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgdr.errors import UsageError

EPOCH = 1 << 32
FIRST_NORMAL_XID = 3       # 0 invalid, 1 bootstrap, 2 frozen


@dataclass(frozen=True)
class XidInput:
    xid: int                   # the low 32 bits, as WAL records carry it
    epoch: int | None          # None: given in its 32-bit form
    text: str

    @property
    def full(self) -> int | None:
        return None if self.epoch is None else self.epoch * EPOCH + self.xid

    def __str__(self) -> str:
        return self.text


def parse_xid(text: str, option: str = "xid") -> XidInput:
    """A 32-bit xid or one with its epoch; UsageError (exit 2) for anything else."""
    cleaned = text.strip()
    hint = "a transaction id: 48213, or with its epoch as txid_current() returns it (4294967296 * epoch + xid)"
    if not cleaned.isascii() or not cleaned.isdigit():
        raise UsageError(f"{option} {text!r}: not a transaction id", hint=hint)
    value = int(cleaned)
    if value >= 1 << 64:
        raise UsageError(f"{option} {text!r}: out of range for a transaction id (64 bits with its epoch)",
                         hint=hint)
    xid, epoch = value % EPOCH, value // EPOCH
    if xid < FIRST_NORMAL_XID:
        raise UsageError(f"{option} {text!r}: not a normal transaction id (0, 1 and 2 are reserved)", hint=hint)
    return XidInput(xid, epoch if value >= EPOCH else None, cleaned)


def full_xid(xid: int, reference: int) -> int:
    """xid (32-bit) with the epoch that puts it nearest reference (a full xid, e.g. a
    checkpoint's nextXid): PostgreSQL's FullXidRelativeTo. Exact while fewer than 2^31
    transactions separate the two, which the wraparound protection guarantees for any
    xid still in use near that checkpoint."""
    diff = (xid - reference) % EPOCH
    if diff >= EPOCH // 2:
        diff -= EPOCH
    full = reference + diff
    return full if full >= 0 else full + EPOCH
