"""The pgdr error hierarchy.

Every error a user can cause or meet carries a one-line cause, an optional hint
(what to do next) and the exit code the CLI must return, so the CLI never has to
guess and never shows a traceback for an expected failure.
"""

from __future__ import annotations


class PgdrError(Exception):
    """Base class: a failure pgdr understands and can explain in one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(PgdrError):
    """pgdr.toml is missing, malformed or names something impossible."""

    exit_code = 2


class UsageError(PgdrError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class ConnectionFailed(PgdrError):
    """A server could not be reached; the message names which and why."""


class ProgramFailed(PgdrError):
    """A PostgreSQL program exited with an unexpected code."""


class BackupFailed(PgdrError):
    """A backup did not complete; nothing partial was published."""


class RepositoryError(PgdrError):
    """The repository is unreadable, inconsistent or belongs to another cluster."""


class SandboxError(PgdrError):
    """The local sandbox could not be created, started or stopped."""


class CouldNotRun(PgdrError):
    """A check could not be carried out for reasons outside the thing checked (scratch disk
    full, programs missing): not a verdict. Exit code 3, so scripts can tell it from 1."""

    exit_code = 3


class LockBusy(PgdrError):
    """Another pgdr process holds the lock this operation needs."""


class AuthenticationFailed(ConnectionFailed):
    """The server refused the credentials: retrying cannot help, fixing them does."""


class PrivilegeMissing(PgdrError):
    """The role lacks a privilege the operation needs; the message names the grant."""
