-- Client sessions terminate may touch, with everything needed to decide and to show them.
-- Never: walsenders, autovacuum and other background workers (backend_type filter),
-- our own session; superusers only when asked.
select a.pid, a.usename, a.datname, a.application_name, a.client_addr::text as client_addr,
       a.state, r.rolsuper as superuser, a.backend_type,
       extract(epoch from now() - a.query_start)::float8 as query_s,
       extract(epoch from now() - a.xact_start)::float8 as xact_s,
       extract(epoch from now() - a.state_change)::float8 as state_s,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), 200) as query
from pg_stat_activity a
left join pg_roles r on r.oid = a.usesysid
where a.backend_type = 'client backend'
  and a.pid <> pg_backend_pid()
  and (%(include_superusers)s or not coalesce(r.rolsuper, false))
  and (%(usename)s::text is null or a.usename = %(usename)s::text)
  and (%(datname)s::text is null or a.datname = %(datname)s::text)
  and (%(pid)s::int is null or a.pid = %(pid)s::int)
  and (%(idle_in_xact)s::float8 is null
       or (a.state in ('idle in transaction', 'idle in transaction (aborted)')
           and a.state_change <= now() - make_interval(secs => %(idle_in_xact)s::float8)))
  and (%(idle)s::float8 is null
       or (a.state = 'idle' and a.state_change <= now() - make_interval(secs => %(idle)s::float8)))
  and (%(longer_than)s::float8 is null
       or (a.state = 'active' and a.query_start <= now() - make_interval(secs => %(longer_than)s::float8)))
  and (%(only_pids)s::int[] is null or a.pid = any(%(only_pids)s::int[]))
order by a.pid
