"""Client-side encryption of every repository object (AES-256-GCM, streaming).

The key is derived from a passphrase (the environment variable `encryption_key_env`
names) with scrypt and a random per-repository salt kept in the repository itself
(`pgdr-encryption.json`, together with a key check, so a wrong passphrase is refused
in one line before anything is read or written).

Object format: a 16-byte header (magic + 8 random nonce bytes), then chunks of at most
1 MiB plaintext, each sealed with AES-GCM under nonce = random prefix ‖ chunk counter.
Each chunk's associated data is the header, the object's key and a final-chunk flag:
a flipped byte, a reordered or dropped chunk, a truncated object, or an object moved to
another name (a segment renamed to stand in for another) all fail authentication.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from pgdr.errors import ConfigError, RepositoryError
from pgdr.repo.layout import ENCRYPTION_FILE as ENCRYPTION_FILE
from pgdr.repo.store import ObjectInfo, ObjectMissing, Store, StoreUnavailable, read_blocks

MAGIC = b"PGDRAE1\0"
HEADER_SIZE = 16
CHUNK = 1 << 20
TAG = 16
_CHECK = b"pgdr key check"
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}


class ObjectDamaged(RepositoryError):
    """An encrypted object fails authentication: altered, truncated, moved, or another key."""


def derive_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def _aad(header: bytes, key: str, final: bool) -> bytes:
    return header + key.encode() + (b"\x01" if final else b"\x00")


def encrypt_chunks(aes: Any, key: str, plain: IO[bytes]) -> Iterator[bytes]:
    prefix = os.urandom(8)
    header = MAGIC + prefix
    yield header
    blocks = read_blocks(plain, CHUNK)
    current = next(blocks, b"")
    counter = 0
    while True:
        following = next(blocks, None)
        final = following is None
        yield aes.encrypt(prefix + counter.to_bytes(4, "big"), current, _aad(header, key, final))
        if following is None:
            return
        current, counter = following, counter + 1


def decrypt_chunks(aes: Any, key: str, sealed: IO[bytes], where: str) -> Iterator[bytes]:
    from cryptography.exceptions import InvalidTag

    header = sealed.read(HEADER_SIZE)
    if len(header) != HEADER_SIZE or not header.startswith(MAGIC):
        raise ObjectDamaged(f"{key} in {where} is not a pgdr-encrypted object (damaged or written without encryption)")
    prefix = header[8:]
    blocks = read_blocks(sealed, CHUNK + TAG)
    current = next(blocks, b"")
    counter = 0
    while True:
        following = next(blocks, None)
        final = following is None
        try:
            yield aes.decrypt(prefix + counter.to_bytes(4, "big"), current, _aad(header, key, final))
        except InvalidTag:
            raise ObjectDamaged(f"{key} in {where} fails authentication (chunk {counter}): altered, truncated "
                                "or moved", hint="this object cannot be trusted; use another backup") from None
        if following is None:
            return
        current, counter = following, counter + 1


class IterReader:
    """A read()-able stream over an iterator of byte strings."""

    def __init__(self, chunks: Iterator[bytes], on_close: Any = None) -> None:
        self.chunks, self.buf, self.on_close = chunks, bytearray(), on_close

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buf) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buf += chunk
        n = len(self.buf) if size < 0 else min(size, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()

    def __enter__(self) -> IterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EncryptedStore:
    """A Store whose objects are sealed on the way in and authenticated on the way out."""

    def __init__(self, inner: Store, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.inner = inner
        self.url = inner.url
        self.aes = AESGCM(key)

    def put_stream(self, key: str, reader: IO[bytes]) -> int:
        return self.inner.put_stream(key, cast(IO[bytes], IterReader(encrypt_chunks(self.aes, key, reader))))

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.put_stream(key, io.BytesIO(data))

    def open_read(self, key: str) -> IO[bytes]:
        raw = self.inner.open_read(key)
        return cast(IO[bytes], IterReader(decrypt_chunks(self.aes, key, raw, self.url), raw.close))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def listing(self, prefix: str) -> list[ObjectInfo]:
        return [o for o in self.inner.listing(prefix) if o.key != ENCRYPTION_FILE]

    def delete(self, keys: list[str]) -> None:
        self.inner.delete(keys)


def _params(inner: Store, local: Path) -> dict[str, Any] | None:
    """pgdr-encryption.json from the store; its copy in the working folder while the store is
    away (the archiver must start, and keep encrypting, during an outage)."""
    cached = local / ENCRYPTION_FILE
    try:
        raw = inner.get_bytes(ENCRYPTION_FILE)
    except ObjectMissing:
        return None
    except StoreUnavailable:
        if not cached.exists():
            raise
        raw = cached.read_bytes()
    try:
        params = dict(json.loads(raw))
    except (ValueError, TypeError):
        raise RepositoryError(f"{ENCRYPTION_FILE} in {inner.url} is unreadable") from None
    if local.is_dir() and not cached.exists():
        cached.write_bytes(raw)  # not secret: a salt and a key check
    return params


def open_encrypted(inner: Store, env_name: str | None, local: Path) -> Store:
    """The store as configured: encrypted with the passphrase from $env_name, refused in one
    line (exit 2) when the variable is unset or empty, the passphrase is wrong, or the
    repository's encryption does not match the configuration."""
    cached = local / ENCRYPTION_FILE
    try:
        params = _params(inner, local)
    except StoreUnavailable:
        if env_name is None:
            return inner  # nothing known says it is encrypted; readers fail on the store anyway
        raise
    if env_name is None:
        if params is not None:
            raise ConfigError(f"repository {inner.url} is encrypted; set [repository] encryption_key_env "
                              "to the variable that holds its passphrase")
        return inner
    passphrase = os.environ.get(env_name, "")
    if not passphrase:
        raise ConfigError(f"encryption_key_env: ${env_name} is not set (or empty); the repository's "
                          "passphrase must be in it")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if params is None:
        if any(o.key != ENCRYPTION_FILE for o in inner.listing("")):
            raise ConfigError(f"repository {inner.url} already holds unencrypted objects; "
                              "use a new repository for encrypted backups")
        salt, nonce = os.urandom(16), os.urandom(12)
        key = derive_key(passphrase, salt, **SCRYPT)
        params = {"format": 1, "cipher": "AES-256-GCM", "kdf": "scrypt", **SCRYPT, "salt": salt.hex(),
                  "check": (nonce + AESGCM(key).encrypt(nonce, _CHECK, ENCRYPTION_FILE.encode())).hex()}
        inner.put_bytes(ENCRYPTION_FILE, json.dumps(params, indent=2).encode())
        if local.is_dir():
            cached.write_bytes(json.dumps(params, indent=2).encode())
        return EncryptedStore(inner, key)
    try:
        key = derive_key(passphrase, bytes.fromhex(params["salt"]), int(params["n"]), int(params["r"]),
                         int(params["p"]))
        check = bytes.fromhex(params["check"])
    except (KeyError, ValueError, TypeError):
        raise RepositoryError(f"{ENCRYPTION_FILE} in {inner.url} is unreadable") from None
    try:
        AESGCM(key).decrypt(check[:12], check[12:], ENCRYPTION_FILE.encode())
    except InvalidTag:
        raise ConfigError(f"wrong passphrase in ${env_name} for repository {inner.url}") from None
    return EncryptedStore(inner, key)
