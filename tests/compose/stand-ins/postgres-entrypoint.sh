#!/bin/sh
# The official image's contract, in short: as root, own the data folder and drop to postgres; on an
# empty folder, initdb with POSTGRES_PASSWORD and run /docker-entrypoint-initdb.d/*.sql once.
set -eu
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?the postgres image needs POSTGRES_PASSWORD}"
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb --username=postgres --encoding=UTF8 --locale=C.UTF-8 --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 -q --username postgres -f "$f" ;; esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$@"
