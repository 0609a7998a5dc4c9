#!/bin/sh
# First start: make the cluster in the (empty) database volume, owned by POSTGRES_USER with
# POSTGRES_PASSWORD (from the env file; never in the image), and its database POSTGRES_DB.
# Every start: run the server, listening on the registry network, password (scram) logins only.
set -eu
bin=$(echo /usr/lib/postgresql/*/bin)
: "${POSTGRES_USER:=enclave}" "${POSTGRES_DB:=enclave}"
if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "enclave-postgres: POSTGRES_PASSWORD is not set (see deploy/compose.env.example)" >&2
    exit 2
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # A server on the socket only, for the one statement initdb cannot do.
    "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp" -w -s start
    PGPASSWORD="$POSTGRES_PASSWORD" "$bin/psql" -h /tmp -U "$POSTGRES_USER" -d postgres -q \
        -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\""
    "$bin/pg_ctl" -D "$PGDATA" -m fast -w -s stop
    echo "enclave-postgres: initialised $PGDATA (database $POSTGRES_DB, owner $POSTGRES_USER)"
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
