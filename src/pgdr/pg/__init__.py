"""Everything that talks to PostgreSQL: its programs, its servers and its SQL."""
