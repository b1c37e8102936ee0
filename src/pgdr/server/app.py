"""The HTTP service (FastAPI on uvicorn). Read-only: nothing here changes state.

GET /healthz/database  200 when the primary accepts writes, 503 with the reason otherwise
GET /ready             200 when the service is up with a readable config and repository
GET /metrics           Prometheus text, from a custom Collector (prometheus_client)
GET /diagnose          the `pgdr diagnose --json` snapshot
GET /docs, /openapi.json (FastAPI's defaults)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from pgdr import __version__
from pgdr.config import Config
from pgdr.pg.conninfo import mask_text
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.server.health import HealthChecker
from pgdr.server.metrics import PgdrCollector
from pgdr.server.scheduler import Scheduler


def create_app(config: Config, programs: Programs, repo: Repository, *, schedule: bool = False,
               health_timeout: float | None = None, health_cache: float | None = None) -> FastAPI:
    checker = HealthChecker(config, health_timeout, health_cache)
    scheduler = Scheduler(config, programs, repo)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if schedule:
            scheduler.start()
        yield
        await scheduler.stop()
        checker.close()

    app = FastAPI(title="pgdr", version=__version__, lifespan=lifespan,
                  description="Health, readiness and metrics for a PostgreSQL cluster (read-only).")

    def schedule_metrics() -> Iterator[Metric]:
        last = GaugeMetricFamily("pgdr_schedule_last_success_timestamp_seconds",
                                 "when a scheduled job last succeeded", labels=["job"])
        fails = GaugeMetricFamily("pgdr_schedule_failures", "failed runs of a scheduled job", labels=["job"])
        for job in scheduler.jobs:
            if job.last_success is not None:
                last.add_metric([job.job], job.last_success)
            fails.add_metric([job.job], float(job.failures))
        yield from (last, fails)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PgdrCollector(config, repo, extra=schedule_metrics))

    @app.get("/healthz/database", summary="Primary reachable and accepting writes (200) or not (503)")
    def health_database(
        timeout: Annotated[float | None, Query(gt=0, le=60, description="seconds; capped at serve.health_timeout")] = None,
    ) -> JSONResponse:
        result = checker.check(timeout)
        return JSONResponse(result.as_dict(), status_code=200 if result.ok else 503)

    @app.get("/ready", summary="The service is up, its config loaded and repository readable")
    def ready() -> JSONResponse:
        body: dict[str, Any] = {"status": "ready", "cluster": config.cluster.name,
                                "uptime_s": round(time.time() - started, 1),
                                "schedule": [j.as_dict() for j in scheduler.jobs] if schedule else None}
        if not repo.root.is_dir():
            body.update(status="not ready", reason=f"repository {repo.root} is not readable")
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/diagnose", summary="The `pgdr diagnose --json` snapshot")
    def diagnose() -> JSONResponse:
        import json

        from pgdr.diagnose.analyze import diagnose as run

        report = run(config, repo)
        text = mask_text(json.dumps(report.as_dict(), default=str))
        return JSONResponse(json.loads(text), status_code=200)

    return app
