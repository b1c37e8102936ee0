-- What a node is right now: role, timeline, WAL positions, replay and receiver state,
-- and the settings failover decisions depend on. One cheap query per node, shared by
-- status, find_primary and the failover preflight.
select pg_is_in_recovery() as in_recovery,
       (select timeline_id from pg_control_checkpoint()) as checkpoint_timeline,
       -- the timeline it writes or replays on now (the checkpoint's lags until the next checkpoint)
       case when pg_is_in_recovery()
            then greatest((select received_tli from pg_stat_wal_receiver),
                          (select min_recovery_end_timeline from pg_control_recovery()),
                          (select timeline_id from pg_control_checkpoint()))
            else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end as timeline,
       case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as current_lsn,
       pg_last_wal_receive_lsn()::text as receive_lsn,
       pg_last_wal_replay_lsn()::text as replay_lsn,
       pg_last_xact_replay_timestamp() as last_replay_time,
       case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end as replay_paused,
       (select system_identifier::text from pg_control_system()) as system_identifier,
       current_setting('server_version') as server_version,
       current_setting('server_version_num')::int as server_version_num,
       current_setting('synchronous_standby_names') as synchronous_standby_names,
       current_setting('wal_log_hints') = 'on' as wal_log_hints,
       current_setting('data_checksums') = 'on' as data_checksums,
       (select status from pg_stat_wal_receiver) as receiver_status,
       (select received_tli from pg_stat_wal_receiver) as receiver_tli,
       (select extract(epoch from now() - last_msg_receipt_time)::float8 from pg_stat_wal_receiver) as receiver_silence_s,
       -- how the primary knows this standby (pg/standbys.py): its slot and application_name
       (select slot_name from pg_stat_wal_receiver) as receiver_slot,
       (select conninfo from pg_stat_wal_receiver) as receiver_conninfo,
       current_setting('cluster_name') as cluster_name,
       now() as now
