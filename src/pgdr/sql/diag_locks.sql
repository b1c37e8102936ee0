-- Every session waiting on a lock and every session in its way, with what each runs.
-- pg_blocking_pids is called only for sessions that wait on a lock.
with waiting as (
    select pid, pg_blocking_pids(pid) as blocked_by
    from pg_stat_activity where wait_event_type = 'Lock'
), involved as (
    select pid from waiting where cardinality(blocked_by) > 0
    union
    select unnest(blocked_by) from waiting
)
select a.pid, coalesce(w.blocked_by, '{}') as blocked_by, a.usename, a.datname,
       a.application_name, a.state, a.wait_event_type, a.wait_event, a.backend_type,
       extract(epoch from now() - a.query_start)::float8 as query_s,
       extract(epoch from now() - a.xact_start)::float8 as xact_s,
       extract(epoch from now() - a.state_change)::float8 as state_s,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), %(qlen)s) as query,
       (select l.locktype || coalesce(' ' || l.mode, '')
               || coalesce(' on ' || case when l.database = (select oid from pg_database where datname = current_database())
                                          then l.relation::regclass::text else l.relation::text end, '')
               || coalesce(' transaction ' || l.transactionid::text, '')
          from pg_locks l where l.pid = a.pid and not l.granted limit 1) as waiting_for
from involved i join pg_stat_activity a on a.pid = i.pid
left join waiting w on w.pid = a.pid
