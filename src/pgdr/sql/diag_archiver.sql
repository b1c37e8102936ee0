-- archive_command's record (pg_stat_archiver) and how many segments wait for it.
select current_setting('archive_mode') as archive_mode,
       current_setting('archive_command') as archive_command,
       s.archived_count, s.last_archived_wal, s.last_archived_time,
       s.failed_count, s.last_failed_wal, s.last_failed_time, s.stats_reset,
       pg_walfile_name(pg_current_wal_lsn()) as current_wal,
       (select count(*) from pg_ls_archive_statusdir() where name like '%.ready')::int as ready_count
from pg_stat_archiver s
