"""Migration safety: freeze point, rehearsal on a copy, rollback (issue #18)."""
