"""Scheduled proof: `pgdr serve --schedule` runs [[schedule]] jobs `verify` and `drill` on the
hand-built cluster; their ages and results reach /metrics; `status` fails once the newest
successful verification or passed drill is older than status.max_verify_age /
max_drill_age (the fault: the proof ages past its limit), and carries the RTO forecast.

Independent checks: the verification record the job wrote in the backup's folder, the
Prometheus text parsed with prometheus_client's own parser, status's exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pgdr.pg.instance import free_port
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import scan_backups
from pgdr.repo.records import read_verification
from tests.conftest import run_cli
from tests.real_cluster import RealCluster

SCHEDULE = ('\n[[schedule]]\njob = "verify"\nevery = "1h"\n'
            '\n[[schedule]]\njob = "drill"\nevery = "1h"\nscenarios = ["backup-validation"]\n')


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _wait_metrics(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> str:
    """Until both proof ages are on /metrics (both jobs finished once)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        assert proc.poll() is None, "pgdr serve exited"
        try:
            text = httpx.get(f"{url}/metrics", timeout=30).text
        except httpx.HTTPError:
            text = ""
        ages = _samples(text, "pgdr_proof_age_seconds") if text else {}
        if {(("kind", "verify"),), (("kind", "drill"),)} <= set(ages):
            return text
        time.sleep(1)
    raise AssertionError("the scheduled verify and drill did not reach /metrics: " + text[-2000:])


def test_scheduled_verify_and_drill_reach_metrics_and_age_into_a_failing_status(real_cluster: RealCluster) -> None:
    cluster = real_cluster
    config = cluster.write_config("schedule", SCHEDULE)
    env = cluster.env_with_passfile()
    repo = Repository(config.parent / "repo")

    def cli(*args: str, ok: int = 0) -> str:
        result = run_cli(*args, config=config, env=env, timeout=300)
        assert result.returncode == ok, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    cli("archiver", "start")
    try:
        cli("backup")
        backup_id = scan_backups(repo)[0][-1].id
        assert read_verification(repo, backup_id) is None
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "pgdr", "serve", "--schedule", "--port", str(port)],
                                env={**env, "PGDR_CONFIG": str(config)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            text = _wait_metrics(f"http://127.0.0.1:{port}", proc)
        except AssertionError as exc:
            os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"{exc}\nserve said: {err.decode(errors='replace')[-3000:]}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        record = read_verification(repo, backup_id)
        assert record is not None and record["passed"]  # the job verified the newest backup
        assert _samples(text, "pgdr_verification_passed")[(("backup_id", backup_id), ("kind", "physical"))] == 1.0
        limits = _samples(text, "pgdr_proof_max_age_seconds")
        assert limits[(("kind", "verify"),)] == 8 * 86400 and limits[(("kind", "drill"),)] == 95 * 86400
        assert _samples(text, "pgdr_measured_rate_bytes_per_second")[(("kind", "restore"),)] > 0

        status = json.loads(cli("status", "--json"))
        by_name = {c["name"]: c for c in status["checks"]}
        assert by_name["verification age"]["status"] == "ok" and by_name["drill age"]["status"] == "ok"
        assert status["forecast"]["restore_rate"]["bytes_per_s"] > 0
        assert status["forecast"]["full_restore_s"] is not None
        assert by_name["rto forecast"]["status"] == "ok"

        # the fault: the proof is older than the limits allow
        Path(config).write_text(config.read_text() + '\n[status]\nmax_verify_age = "1s"\nmax_drill_age = "1s"\n'
                                '\n[drill]\nfull_restore_rto = "0.001s"\n')
        time.sleep(1.5)
        status = json.loads(cli("status", "--json", ok=1))
        by_name = {c["name"]: c for c in status["checks"]}
        assert by_name["verification age"]["status"] == "fail"
        assert by_name["drill age"]["status"] == "fail"
        assert by_name["rto forecast"]["status"] == "fail"  # the forecast exceeds the target
    finally:
        run_cli("archiver", "stop", config=config, env=env)
