#!/usr/bin/env bash
# The main job on the built-in sandbox: sandbox up, writes, backups, status, summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PGDR=.venv/bin/pgdr
DIR=${PGDR_SANDBOX:-.pgdr-sandbox}
# As root, servers run as `postgres`, which must be able to enter the folder; a checkout
# under /root is not enterable, so fall back to /tmp there.
if [ -z "${PGDR_SANDBOX:-}" ] && [ "$(id -u)" -eq 0 ] && ! su postgres -s /bin/sh -c "test -x '$PWD'" 2>/dev/null; then
  DIR=/tmp/pgdr-sandbox
fi
export PGDR_CONFIG="$DIR/pgdr.toml"

echo "== sandbox up ($DIR)"
$PGDR sandbox up --dir "$DIR"
echo "== application writes (3 s, one commit per order)"
$PGDR sandbox write --dir "$DIR" --seconds 3
echo "== physical backup"
$PGDR backup
echo "== logical backup"
$PGDR backup --logical
echo "== verify the backup (restore into a scratch instance and prove it)"
$PGDR verify latest
echo "== status"
$PGDR status || true
echo "== backups"
$PGDR list
echo "== drill: real faults on throwaway sandboxes, recovered by pgdr, RTO/RPO measured"
$PGDR drill --dir "$DIR/drills"
echo "== incident record of the drill"
$PGDR report latest | head -20
echo
echo "The sandbox is still running: PGDR_CONFIG=$PGDR_CONFIG $PGDR status | stop it with: $PGDR sandbox down --dir $DIR"
