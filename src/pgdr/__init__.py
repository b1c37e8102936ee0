"""pgdr: PostgreSQL disaster-recovery runbooks as one tested program."""

__version__ = "0.1.0"
