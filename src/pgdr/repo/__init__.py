"""The backup repository: the single source of truth for backups and WAL."""
