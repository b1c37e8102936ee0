"""Restores into NEW data directories: scratch folders, extraction, recovery settings,
and verification of what was restored. The PITR command reuses all but verify."""
