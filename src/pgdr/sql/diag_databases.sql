-- Per database: size, transaction-ID age (wraparound), checksum failures.
select d.datname, d.datallowconn,
       case when has_database_privilege(d.oid, 'CONNECT') then pg_database_size(d.oid) end as size_bytes,
       age(d.datfrozenxid)::bigint as xid_age,
       mxid_age(d.datminmxid)::bigint as mxid_age,
       s.checksum_failures, s.checksum_last_failure, s.deadlocks
from pg_database d left join pg_stat_database s on s.datid = d.oid
order by d.datname
