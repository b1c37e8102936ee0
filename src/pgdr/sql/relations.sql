-- Every relation with storage in this database, keyed the way pg_waldump prints
-- block references: tablespace/database/relfilenode. Mapped catalogs report
-- relfilenode 0, so pg_relation_filenode() gives the real one.
select coalesce(nullif(c.reltablespace, 0), d.dattablespace) as spc,
       case when c.relisshared then 0 else d.oid end as db,
       pg_relation_filenode(c.oid) as filenode,
       n.nspname as schema_name,
       c.relname as name,
       c.relkind::text as kind
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
cross join (select oid, dattablespace from pg_database where datname = current_database()) d
where c.relkind in ('r', 'i', 't', 'm', 'S')
  and c.relpersistence <> 't'  -- temporary tables: not in WAL, and their churn is noise
  and pg_relation_filenode(c.oid) is not null
