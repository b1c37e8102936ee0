-- One row: the instance's role, limits and client connections by state.
select pg_is_in_recovery() as in_recovery,
       current_setting('transaction_read_only') = 'on' as read_only,
       current_setting('max_connections')::int as max_connections,
       current_setting('superuser_reserved_connections')::int as superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int as reserved,
       current_setting('server_version_num')::int as server_version_num,
       (select count(*) from pg_stat_activity where backend_type = 'client backend')::int as client_connections,
       (select count(*) from pg_stat_activity)::int as all_backends,
       (select coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
          from (select coalesce(state, 'unknown') as state, count(*)::int as n
                  from pg_stat_activity where backend_type = 'client backend'
                 group by 1) s) as by_state,
       (select max(age(datfrozenxid))::bigint from pg_database) as max_xid_age,
       -- how the primary knows this standby (pg/standbys.py): its slot and application_name
       (select slot_name from pg_stat_wal_receiver) as receiver_slot,
       (select conninfo from pg_stat_wal_receiver) as receiver_conninfo,
       current_setting('cluster_name') as cluster_name,
       now() as now
