#!/bin/sh
# The API role's password from the environment into PgBouncer's userlist (plain text,
# readable by this container's user only; PgBouncer does the SCRAM exchange with it).
set -eu
umask 077
printf '"tenant_api" "%s"\n' "${API_DB_PASSWORD:?API_DB_PASSWORD is required}" > /etc/pgbouncer/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
