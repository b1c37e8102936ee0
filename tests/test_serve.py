"""pgdr serve: health 200/503 within its timeout, Prometheus metrics, no 500 under fuzzing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.instance import free_port
from pgdr.pg.programs import RunAs
from pgdr.repo.layout import Repository
from pgdr.sandbox.sandbox import Sandbox
from pgdr.server.app import create_app


@contextmanager
def running_server(app: object) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _timed_get(client: httpx.Client, url: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - t0


def test_health_200_then_503_within_timeout_then_200(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("health", standbys=0)
    config = load_config(sandbox.config_path)
    app = create_app(config, programs, Repository(config.repository.path, RunAs()),
                     health_timeout=1.5, health_cache=0)
    primary = sandbox.instance(sandbox.primary, programs)
    with running_server(app) as base, httpx.Client(timeout=10) as client:
        r, _ = _timed_get(client, f"{base}/healthz/database")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["node"] == "primary"

        primary.stop()
        r, took = _timed_get(client, f"{base}/healthz/database")
        assert r.status_code == 503 and took < 1.5 + 0.5
        assert r.json()["cause"] == "refused"

        primary.start()
        r, _ = _timed_get(client, f"{base}/healthz/database")
        assert r.status_code == 200

        # A hung server (postmaster stopped with SIGSTOP): still an answer within the timeout.
        pid = primary.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            r, took = _timed_get(client, f"{base}/healthz/database")
            assert r.status_code == 503 and took < 1.5 + 0.5, took
            assert r.json()["cause"] == "timeout"
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while client.get(f"{base}/healthz/database").status_code != 200:
            assert time.monotonic() < deadline, "health did not recover after SIGCONT"
            time.sleep(0.2)
        assert client.get(f"{base}/ready").status_code == 200


def test_metrics_parse_and_hold_backup_age(shared_sandbox: Sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    config = load_config(shared_sandbox.config_path)
    repo = Repository(config.repository.path, programs.run_as)
    take_physical_backup(config, programs, repo)
    with TestClient(create_app(config, programs, repo)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    age = [s for s in families["pgdr_newest_backup_age_seconds"].samples if s.labels["kind"] == "physical"]
    assert len(age) == 1 and 0 <= age[0].value < 600
    up = {s.labels["node"]: s.value for s in families["pgdr_node_up"].samples}
    assert up == {"primary": 1.0, "standby1": 1.0}
    lag = {s.labels["application_name"] for s in families["pgdr_replication_lag_bytes"].samples}
    assert "standby1" in lag and any(name.startswith("pgdr_archiver_") for name in lag)
    assert any(s.labels["database"] == "app" and s.value > 2_000_000_000
               for s in families["pgdr_wraparound_xids_left"].samples)
    assert any(s.labels["state"] == "active" for s in families["pgdr_connections"].samples)
    assert "pgdr_archive_lag_bytes" in families
    assert "pgdr_newest_verified_backup_age_seconds" in families


def test_openapi_and_fuzz_finds_no_500(shared_sandbox: Sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    config = load_config(shared_sandbox.config_path)
    repo = Repository(config.repository.path, programs.run_as)
    with TestClient(create_app(config, programs, repo, health_cache=5)) as client:
        spec = client.get("/openapi.json").json()
        paths = sorted(spec["paths"])
        assert {"/healthz/database", "/ready", "/metrics", "/diagnose"} <= set(paths)
        for path, ops in spec["paths"].items():
            assert set(ops) == {"get"}, f"{path} exposes {set(ops)}: nothing may change state"
        for path in paths:
            assert client.get(path).status_code in (200, 503)

        junk = st.one_of(st.text(max_size=20), st.floats(allow_nan=True).map(str),
                         st.integers().map(str))

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(["/healthz/database", "/ready"]), value=junk,
               method=st.sampled_from(["GET", "POST", "DELETE"]))
        def fuzz(path: str, value: str, method: str) -> None:
            response = client.request(method, path, params={"timeout": value})
            assert response.status_code < 500 or response.status_code == 503, response.text
            if method != "GET":
                assert response.status_code == 405

        fuzz()


def test_bad_schedule_config_is_one_line(shared_sandbox: Sandbox) -> None:
    from tests.conftest import run_cli

    path = shared_sandbox.root / "bad-schedule.toml"
    path.write_text(shared_sandbox.config_path.read_text() + '\n[[schedule]]\njob = "backup"\nevery = "often"\n')
    out = run_cli("serve", config=path)
    assert out.returncode == 2 and "schedule.0.every" in out.stderr and "Traceback" not in out.stderr


def test_schedule_runs_backup_in_service(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("sched", standbys=0)
    path = sandbox.root / "sched.toml"
    path.write_text(sandbox.config_path.read_text() + '\n[[schedule]]\njob = "backup"\nevery = "1h"\n')
    config = load_config(path)
    repo = Repository(config.repository.path, programs.run_as)
    with TestClient(create_app(config, programs, repo, schedule=True)) as client:
        deadline = time.monotonic() + 60
        while True:
            job = client.get("/ready").json()["schedule"][0]
            if job["last_success"] is not None or job["last_error"]:
                break
            assert time.monotonic() < deadline, "scheduled backup did not run"
            time.sleep(0.3)
        assert job["last_error"] is None and job["runs"] == 1
        assert job["next_due"] > time.time() + 3000
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert families["pgdr_schedule_last_success_timestamp_seconds"].samples
    from pgdr.repo.manifest import list_backups
    assert [b.id for b in list_backups(repo)] == [job["last_result"]]
