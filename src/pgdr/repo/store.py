"""Where a repository's objects live: a local folder or an S3-compatible bucket.

One small interface, so the code above it never knows which: `put_stream` (an object
appears only when it is complete: a renamed temp file, or a completed multipart upload
whose parts went up in parallel), `open_read` (a stream), `get_bytes`, `list` (the
listing is the truth: nothing else says what exists) and `delete`. Every failure of the
store is a `StoreUnavailable`: one line naming the store, never a traceback, and an
OSError too, so the archiver keeps the segment and retries with back-off.

boto3 is imported only when an S3 store is opened (`pgdr --help` stays fast); credentials
come from boto3's standard chain (environment, shared files, instance roles).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from pgdr.errors import RepositoryError
from pgdr.fsutil import durable_rename
from pgdr.pg.programs import RunAs

PART_SIZE = 8 << 20          # multipart part size (S3's minimum is 5 MiB)
PARALLEL_PARTS = 4           # parts in flight per upload: bounds memory to ~4 parts


class StoreUnavailable(RepositoryError, OSError):
    """The object store could not be reached or refused a request (retry later)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        RepositoryError.__init__(self, message, hint)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store(Protocol):
    url: str

    def put_stream(self, key: str, reader: IO[bytes]) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def listing(self, prefix: str) -> list[ObjectInfo]: ...
    def delete(self, keys: list[str]) -> None: ...


class ObjectMissing(RepositoryError):
    """The object is not in the store."""


def read_blocks(reader: IO[bytes], size: int) -> Iterator[bytes]:
    """Blocks of exactly `size` bytes (the last one shorter) from any stream."""
    buf = bytearray()
    while True:
        chunk = reader.read(size - len(buf))
        if not chunk:
            break
        buf += chunk
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


# ---- a local folder ----------------------------------------------------------------------

class LocalStore:
    def __init__(self, root: Path, run_as: RunAs | None = None) -> None:
        self.root = root
        self.run_as = run_as or RunAs()
        self.url = str(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise RepositoryError(f"invalid object key {key!r}")
        return self.root / key

    def put_stream(self, key: str, reader: IO[bytes]) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        total = 0
        try:
            with open(tmp, "wb") as fh:
                for block in read_blocks(reader, 1 << 20):
                    fh.write(block)
                    total += len(block)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.chmod(tmp, 0o640)
        self.run_as.chown(tmp)
        durable_rename(tmp, dest)
        return total

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.put_stream(key, io.BytesIO(data))

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is not in {self.url}") from None

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def listing(self, prefix: str) -> list[ObjectInfo]:
        base = self.root / prefix if prefix else self.root
        out = []
        for dirpath, _dirs, files in os.walk(base if base.is_dir() else base.parent):
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, path.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


# ---- an S3-compatible bucket ---------------------------------------------------------------

class S3Store:
    def __init__(self, url: str, endpoint: str | None = None, region: str | None = None) -> None:
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise RepositoryError(f"repository url {url!r} is not s3://BUCKET[/PREFIX]")
        self.url = url.rstrip("/")
        bucket_prefix = url[5:].split("/", 1)
        self.bucket = bucket_prefix[0]
        self.prefix = (bucket_prefix[1].strip("/") + "/") if len(bucket_prefix) > 1 and bucket_prefix[1].strip("/") else ""
        import boto3
        from botocore.config import Config as BotoConfig

        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                              connect_timeout=5, read_timeout=60,
                              max_pool_connections=PARALLEL_PARTS * 4))

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _fail(self, what: str, exc: Exception) -> StoreUnavailable:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(f"object store {self.url}: {what}: {text}",
                                hint="check the endpoint, the bucket and the credentials (boto3's chain)")

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(f"{kwargs.get('Key', '')} is not in {self.url}") from None
            raise self._fail(what, exc) from None
        except BotoCoreError as exc:
            raise self._fail(what, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"put {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_stream(self, key: str, reader: IO[bytes]) -> int:
        """Multipart upload with PARALLEL_PARTS parts in flight; the object exists only once
        CompleteMultipartUpload succeeds, and any failure aborts the upload."""
        blocks = read_blocks(reader, PART_SIZE)
        first = next(blocks, b"")
        second = next(blocks, None)
        if second is None:  # small: one request
            self.put_bytes(key, first)
            return len(first)
        upload = self._call(f"start upload of {key}", self.client.create_multipart_upload,
                            Bucket=self.bucket, Key=self._key(key))
        upload_id = upload["UploadId"]
        total = 0
        slots = threading.BoundedSemaphore(PARALLEL_PARTS)
        futures: list[Future[dict[str, Any]]] = []

        def part(number: int, body: bytes) -> dict[str, Any]:
            try:
                answer = self._call(f"upload part {number} of {key}", self.client.upload_part,
                                    Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                                    PartNumber=number, Body=body)
                return {"PartNumber": number, "ETag": answer["ETag"]}
            finally:
                slots.release()

        try:
            with ThreadPoolExecutor(max_workers=PARALLEL_PARTS) as pool:
                for number, body in enumerate(itertools.chain((first, second), blocks), start=1):
                    if any(f.done() and f.exception() for f in futures):
                        break  # a part failed: stop reading, result() below raises it
                    slots.acquire()
                    futures.append(pool.submit(part, number, body))
                    total += len(body)
            parts = [f.result() for f in futures]
            self._call(f"complete upload of {key}", self.client.complete_multipart_upload,
                       Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            except Exception:  # the store is gone: its lifecycle rules clean the parts
                pass
            raise
        return total

    def open_read(self, key: str) -> IO[bytes]:
        answer = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return cast(IO[bytes], _BotoStream(answer["Body"], self, key))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        try:
            self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def listing(self, prefix: str) -> list[ObjectInfo]:
        out = []
        token: dict[str, str] = {}
        while True:
            page = self._call(f"list {prefix}", self.client.list_objects_v2, Bucket=self.bucket,
                              Prefix=self._key(prefix), **token)
            for item in page.get("Contents", []):
                out.append(ObjectInfo(item["Key"][len(self.prefix):], int(item["Size"])))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
            self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})


class _BotoStream:
    """A botocore body whose network errors become StoreUnavailable."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self.body, self.store, self.key = body, store, key

    def read(self, size: int = -1) -> bytes:
        try:
            return bytes(self.body.read(None if size < 0 else size))
        except Exception as exc:
            raise self.store._fail(f"read {self.key}", exc) from None

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _BotoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
