"""A Redis server as pgdr reaches it: its URL parsed once, shown only masked.

The password goes to the server (redis-py) or to redis-cli through REDISCLI_AUTH,
never into argv, output, logs or the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pgdr.errors import ConfigError, ConnectionFailed

if TYPE_CHECKING:
    from pgdr.config import RedisConfig

SECRET_ENV = ("REDISCLI_AUTH", "PGPASSWORD", "PGDR_SECRET")


@dataclass(frozen=True)
class RedisUrl:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @property
    def display(self) -> str:
        """Where it is, for output and metadata: never the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisUrl:
    """redis://[[user]:password@]host[:port][/db]; one line naming the problem, no secret."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"invalid redis url: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"invalid redis url: scheme {parts.scheme or '(none)'!r}; use redis://host:port/db")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"invalid redis url: database {path!r} is not a number")
    return RedisUrl(host=parts.hostname or "localhost", port=port, db=int(path or 0),
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None,
                    tls=parts.scheme == "rediss")


def make_client(*, host: str, port: int, timeout: float, **kwargs: Any) -> Any:
    """The one way pgdr makes a redis-py client (imported here: `pgdr --help` must not pay
    for it): bounded by timeout, and no silent retries with backoff — pgdr's own loops
    decide how long to wait, and say for what."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host=host, port=port, socket_connect_timeout=timeout, socket_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), decode_responses=True, **kwargs)


@dataclass(frozen=True)
class RedisTarget:
    name: str
    url: RedisUrl
    timeout: float

    @classmethod
    def of(cls, config: RedisConfig) -> RedisTarget:
        return cls(config.name, parse_url(config.url), config.connect_timeout)

    def client(self, timeout: float | None = None) -> Any:
        u = self.url
        return make_client(host=u.host, port=u.port, db=u.db, username=u.username, password=u.password,
                           ssl=u.tls, timeout=timeout or self.timeout)

    def info(self, section: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """INFO as a dict; ConnectionFailed (one line, no password) when it cannot be had."""
        import redis

        try:
            client = self.client(timeout)
            try:
                return dict(client.info(section) if section else client.info())
            finally:
                client.close()
        except redis.AuthenticationError as exc:
            raise ConnectionFailed(f"redis {self.name} ({self.url.display}) refused the password: {exc}",
                                   hint="check the password in [[redis]] url") from None
        except redis.RedisError as exc:
            raise ConnectionFailed(f"redis {self.name} ({self.url.display}) unreachable: {exc}") from None

    def cli_args(self) -> list[str]:
        """redis-cli's connection arguments: no password here (REDISCLI_AUTH carries it)."""
        u = self.url
        args = ["-h", u.host, "-p", str(u.port), "-n", str(u.db)]
        if u.username:
            args += ["--user", u.username]
        if u.tls:
            args.append("--tls")
        return args

    def cli_env(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in SECRET_ENV}
        env.update({"LANG": "C", "LC_ALL": "C"})
        if self.url.password:
            env["REDISCLI_AUTH"] = self.url.password
        return env
