"""The hand-built cluster fixture is what it claims to be (so the tests on it mean something)."""

from __future__ import annotations

import psycopg
import pytest

from pgdr.errors import ConnectionFailed
from pgdr.pg.connect import connect
from tests.real_cluster import RealCluster


def test_root_is_refused_on_the_socket_and_needs_a_password_over_tcp(real_cluster: RealCluster) -> None:
    with pytest.raises(ConnectionFailed):  # peer: root is not postgres
        connect(real_cluster.primary.conninfo(), timeout=3).close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(real_cluster.tcp(real_cluster.primary) + " password=wrong", connect_timeout=3)
    with psycopg.connect(real_cluster.tcp(real_cluster.primary) + f" password={real_cluster.passwords['dba']}",
                         connect_timeout=3) as conn:
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (True,)


def test_standby_streams_as_replicator_named_walreceiver(real_cluster: RealCluster) -> None:
    row = real_cluster.psql("select usename, application_name, state from pg_stat_replication")
    assert row == "replicator|walreceiver|streaming"
    conninfo = real_cluster.psql("show primary_conninfo", instance=real_cluster.standby)
    assert "user=replicator" in conninfo and "passfile=" in conninfo and "password" not in conninfo
    assert real_cluster.psql("select count(*) from orders", dbname="app") == "3000"
    assert real_cluster.psql("show data_checksums") == "on"


def test_pgbouncer_in_front_with_scram(real_cluster: RealCluster) -> None:
    bouncer = real_cluster.start_pgbouncer()
    st = bouncer.ini.stat()
    assert oct(st.st_mode & 0o777) == "0o640" and st.st_uid != 0
    with psycopg.connect(bouncer.conninfo() + f" password={real_cluster.passwords['app']}",
                         connect_timeout=5) as conn:
        assert conn.execute("select count(*) from customers").fetchone() == (500,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(bouncer.conninfo() + " password=wrong", connect_timeout=5)
