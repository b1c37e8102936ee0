-- Client sessions over a threshold: long queries, long transactions, idle in transaction.
-- Ages in seconds; the query text cut to %(qlen)s characters.
select a.pid, a.usename, a.datname, a.application_name, a.client_addr::text as client_addr,
       a.state, a.wait_event_type, a.wait_event,
       extract(epoch from now() - a.query_start)::float8 as query_s,
       extract(epoch from now() - a.xact_start)::float8 as xact_s,
       extract(epoch from now() - a.state_change)::float8 as state_s,
       extract(epoch from now() - a.backend_start)::float8 as backend_s,
       left(regexp_replace(a.query, '\s+', ' ', 'g'), %(qlen)s) as query,
       age(a.backend_xmin)::bigint as xmin_age
from pg_stat_activity a
where a.backend_type = 'client backend' and a.pid <> pg_backend_pid()
  and ((a.state = 'active' and a.query_start < now() - make_interval(secs => %(long_query)s))
       or a.xact_start < now() - make_interval(secs => %(long_xact)s)
       or (a.state like 'idle in transaction%%'
           and a.state_change < now() - make_interval(secs => %(idle_in_xact)s)))
order by least(a.xact_start, a.query_start) nulls last
