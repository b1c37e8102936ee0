-- pgdr migrate --rehearse: relation locks other sessions hold now (sampled while the command runs)
select l.pid, l.mode,
       coalesce(n.nspname || '.' || c.relname, 'relation ' || l.relation::text) as what
from pg_locks l
left join pg_class c on c.oid = l.relation
left join pg_namespace n on n.oid = c.relnamespace
where l.granted and l.locktype = 'relation' and l.pid <> pg_backend_pid()
  and coalesce(n.nspname, '') not in ('pg_catalog', 'information_schema')
  and coalesce(n.nspname, '') not like 'pg_toast%'
