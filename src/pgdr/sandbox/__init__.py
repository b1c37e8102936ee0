"""A local primary + streaming standbys + WAL archive in one folder."""

from pathlib import Path

# Here, not in sandbox.py, so the CLI can name the default without importing the sandbox.
DEFAULT_DIR = Path(".pgdr-sandbox")
