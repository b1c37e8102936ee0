"""Redis beside PostgreSQL: RDB snapshots in the same repository, verified and restorable."""
