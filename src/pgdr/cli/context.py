"""What every command needs: the config (loaded lazily), programs and repository."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first used: `pgdr --help` must not pay for pydantic
    from pgdr.config import Config
    from pgdr.pg.programs import Programs
    from pgdr.repo.layout import Repository
    from pgdr.repo.remote import WalRange


@dataclass
class AppContext:
    config_path: Path | None = None
    debug: bool = False
    _config: Config | None = field(default=None, repr=False)
    _repo: Repository | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            from pgdr.config import load_config

            self.adopt(load_config(self.config_path))
        assert self._config is not None
        return self._config

    @property
    def config_loaded(self) -> bool:
        return self._config is not None

    def adopt(self, config: Config) -> Config:
        """Use this (validated) config from now on: `pgdr backup` validates it beside its copy."""
        from pgdr.pg.bounds import apply_config

        self._config = config
        apply_config(config.pg)
        return config

    @property
    def programs(self) -> Programs:
        from pgdr.errors import ConfigError
        from pgdr.pg.programs import Programs, RunAs

        if self._config is None:
            # `f(obj.programs, obj.repo)` asks for programs before anything loaded the config:
            # load it here, or [pg] bindir (another major version's programs) is ignored.
            try:
                self.config  # noqa: B018 - loads and caches the config
            except ConfigError:
                return Programs()  # commands that need no config (sandbox up)
        pg = self._config.pg if self._config is not None else None
        if pg is None:
            return Programs()
        return Programs(pg.bindir, RunAs(pg.os_user))

    def require_physical(self, what: str, instead: str, *, timeout: float = 5) -> None:
        """One-line refusal of a physical-only command in logical-only mode."""
        from pgdr.mode import require_physical

        require_physical(self.config, what, instead, timeout=timeout)

    @property
    def repo(self) -> Repository:
        """The repository (with its object store, if configured; the catalog is synced on first read)."""
        if self._repo is None:
            from pgdr.pg.programs import RunAs
            from pgdr.repo.layout import Repository
            from pgdr.repo.remote import open_store

            run_as = RunAs(self.config.pg.os_user)
            self._repo = Repository(self.config.repository.path, run_as,
                                    open_store(self.config.repository, run_as))
        return self._repo

    def local_cache(self) -> Repository:
        """The local folder alone (restore_command: the WAL was fetched before recovery began)."""
        from pgdr.pg.programs import RunAs
        from pgdr.repo.layout import Repository

        return Repository(self.config.repository.path, RunAs(self.config.pg.os_user))

    def drop_cached_backups(self) -> None:
        """After a verify or restore from an object store: no backup files left in the cache
        (and, for an encrypted repository, no decrypted WAL either)."""
        if self._repo is not None and self._repo.store is not None:
            from pgdr.repo.remote import drop_cache

            drop_cache(self._repo)

    def repo_with_wal(self, wanted: Callable[[Repository], WalRange] | None = None) -> Repository:
        """The repository with the part of an object store's WAL archive a command needs
        (`wanted(repo)`: remote.restore_range, backup_range…; default all of it) fetched
        into the local cache. Commands that decide from names and sizes (status, expire)
        use the store's listing instead (remote.check_listing, listed_files)."""
        repo = self.repo
        if repo.store is not None:
            from pgdr.repo.remote import ALL_WAL, sync_wal

            sync_wal(repo, wanted(repo) if wanted is not None else ALL_WAL)
        return repo
