-- pgdr migrate --rehearse: each table's file (a new relfilenode = rewritten) and rows written
select c.oid::bigint as oid, n.nspname || '.' || c.relname as name, c.relfilenode::bigint as filenode,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)::bigint as written
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_stat_user_tables s on s.relid = c.oid
where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%'
