"""Importing what a later step needs while child processes do the current one.

Why: psycopg and the modules built on it cost ~40-50 ms to import, and restore and verify
need none of it until their server starts; while `zstd | tar` extract the backup, the
interpreter would otherwise sit waiting. A module being imported on the thread is simply
waited for by a later import of it on the main thread (Python's per-module import lock),
and an import that fails here fails again, with its traceback, where the module is used.
"""

from __future__ import annotations

import importlib
import threading


def preload(*modules: str) -> None:
    """Import modules on a daemon thread, now; returns at once."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - raised again where the module is used
                return

    threading.Thread(target=run, name="pgdr-preload", daemon=True).start()
