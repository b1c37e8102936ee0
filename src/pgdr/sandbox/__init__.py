"""A local primary + streaming standbys + WAL archive in one folder."""
