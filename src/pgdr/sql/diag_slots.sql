-- Replication slots and the WAL each one keeps on the primary's disk.
select slot_name, slot_type, database, active, active_pid, wal_status,
       restart_lsn::text as restart_lsn,
       case when restart_lsn is not null
            then pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint end as retained_bytes,
       safe_wal_size
from pg_replication_slots
order by slot_name
