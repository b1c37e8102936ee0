"""`pgdr serve`: health, readiness and metrics over HTTP (FastAPI on uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from pgdr.cli.context import AppContext


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 8008)")] = None,
    schedule: Annotated[bool, typer.Option("--schedule", help="run the schedule jobs from the config (\\[\\[schedule]])")] = False,
) -> None:
    """Serve /healthz/database, /ready, /metrics (and /docs) — read-only; --schedule runs backups."""
    import uvicorn

    from pgdr.server.app import create_app

    obj: AppContext = ctx.obj
    config = obj.config
    app = create_app(config, obj.programs, obj.repo, schedule=schedule)
    uvicorn.run(app, host=host or config.serve.host, port=port or config.serve.port,
                log_level="debug" if obj.debug else "warning", access_log=obj.debug)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
