"""Taking backups: physical base backups, logical dumps, and the continuous WAL archive."""
