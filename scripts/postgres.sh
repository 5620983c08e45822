#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests that run on PostgreSQL, and
# prints the URL they use (ARCHFARM_TEST_POSTGRES) on its last line. Idempotent and non-interactive:
#   * a server already answering is used as it is;
#   * a cluster that is installed but stopped is started;
#   * with none installed, Debian's postgresql is installed, started, and its `postgres` role given
#     the password in the URL below (so password and trust authentication both work).
# The client tools the tests read the database back with (psql, pg_dump) are installed too.
# Set ARCHFARM_TEST_POSTGRES to use another server; it must allow CREATE DATABASE.
set -euo pipefail

URL="${ARCHFARM_TEST_POSTGRES:-postgres://postgres:archfarm@127.0.0.1:5432/test}"
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'postgres.sh: error: %s\n' "$*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
wait_ready() {
    for _ in $(seq 1 60); do ready && return 0; sleep 0.5; done
    die "PostgreSQL did not answer on 127.0.0.1:5432 within 30 s"
}

if ! command -v psql >/dev/null 2>&1 || ! command -v pg_dump >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
    say "installing postgresql-client"
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends postgresql-client >&2
fi

if ! ready; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        say "installing postgresql (no cluster on this machine)"
        apt-get update -qq || true
        apt-get install -y -qq --no-install-recommends postgresql >&2
        fresh=1
    fi
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    wait_ready
    if [ "${fresh:-0}" = 1 ]; then
        password="$(printf '%s' "$URL" | sed -n 's#^postgres[a-z]*://[^:/@]*:\([^@]*\)@.*#\1#p')"
        [ -n "$password" ] && su postgres -c "psql -qc \"ALTER USER postgres PASSWORD '$password'\"" >&2
    fi
fi

# The URL's database must exist: the tests connect to it to create their own.
db="$(printf '%s' "$URL" | sed -e 's#?.*##' -e 's#.*/##')"
maintenance="${URL%/*}/postgres"
if ! psql "$URL" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    say "creating database $db"
    psql "$maintenance" -qc "CREATE DATABASE \"$db\"" >&2 || die "cannot reach $maintenance to create $db"
fi
psql "$URL" -qAtc 'SELECT 1' >/dev/null || die "cannot connect to $URL"
# Scratch databases of an earlier run that was killed before it could drop them: those nobody is
# connected to (a run in progress holds connections to its own).
for stale in $(psql "$URL" -qAtc "SELECT d.datname FROM pg_database d WHERE (d.datname LIKE 'archfarm\_scratch\_%' OR d.datname LIKE 'archfarm\_e2e\_%') AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"); do
    psql "$URL" -qc "DROP DATABASE IF EXISTS \"$stale\"" >&2 || true
done
say "PostgreSQL: $(psql "$URL" -qAtc 'SHOW server_version')"
printf '%s\n' "$URL"
