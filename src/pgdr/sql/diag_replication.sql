-- Each walsender: who, state, sync state, lag in bytes and seconds.
select pid, application_name, client_addr::text as client_addr, state, sync_state,
       sent_lsn::text as sent_lsn, replay_lsn::text as replay_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint as sent_lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint as flush_lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint as replay_lag_bytes,
       extract(epoch from write_lag)::float8 as write_lag_s,
       extract(epoch from flush_lag)::float8 as flush_lag_s,
       extract(epoch from replay_lag)::float8 as replay_lag_s,
       extract(epoch from now() - backend_start)::float8 as connected_s
from pg_stat_replication
order by application_name
