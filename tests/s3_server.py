"""A real S3-protocol server for the tests: moto's standalone server (moto_server) over
HTTP on a free port, driven with boto3 as against AWS. The `moto` fixture in conftest.py
starts one per test module; tests read the bucket back with boto3 directly (an independent
look, not pgdr's own report)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgdr.pg.instance import free_port

BUCKET = "pgdr-test"


@contextmanager
def moto_server() -> Iterator[tuple[int, Any]]:
    """(port, boto3 client) of a fresh moto_server holding an empty BUCKET; AWS test
    credentials in the environment meanwhile (pgdr takes them through boto3's chain)."""
    import boto3

    port = free_port()
    log = open(f"/tmp/pgdr-moto-{port}.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not listen on {port} (see {log.name})") from None
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield port, client
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bucket_keys(client: Any, prefix: str) -> dict[str, int]:
    """Every object under prefix in BUCKET, with its size (the bucket's own listing)."""
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out
