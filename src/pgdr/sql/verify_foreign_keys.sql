-- Every foreign key, validated or NOT VALID, with its column pairs in key order.
select con.conname as name,
       cn.nspname as schema_name, c.relname as table_name,
       pn.nspname as ref_schema, p.relname as ref_table,
       con.convalidated as validated,
       con.confmatchtype::text as match_type,
       array(select a.attname::text from unnest(con.conkey) with ordinality k(attnum, i)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum
             order by k.i) as columns,
       array(select a.attname::text from unnest(con.confkey) with ordinality k(attnum, i)
             join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.attnum
             order by k.i) as ref_columns
from pg_constraint con
join pg_class c on c.oid = con.conrelid join pg_namespace cn on cn.oid = c.relnamespace
join pg_class p on p.oid = con.confrelid join pg_namespace pn on pn.oid = p.relnamespace
where con.contype = 'f'
  and c.relkind = 'r'  -- partitions carry the check; the partitioned parent has no rows
  and cn.nspname not in ('pg_catalog', 'information_schema')
  and cn.nspname not like 'pg_toast%' and cn.nspname not like 'pg_temp%'
order by 2, 3, 1
