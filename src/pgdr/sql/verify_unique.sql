-- Every primary key and unique constraint with its columns in key order.
select con.conname as name, con.contype::text as kind,
       n.nspname as schema_name, c.relname as table_name,
       coalesce(i.indnullsnotdistinct, false) as nulls_not_distinct,
       array(select a.attname::text from unnest(con.conkey) with ordinality k(attnum, i)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum
             order by k.i) as columns
from pg_constraint con
join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
left join pg_index i on i.indexrelid = con.conindid
where con.contype in ('p', 'u') and c.relkind = 'r'
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'
order by 3, 4, 1
