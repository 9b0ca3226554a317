#!/bin/sh
# The API process's logins' passwords from the environment into PgBouncer's userlist
# (plain text, readable by this container's user only; PgBouncer does the SCRAM exchange
# with them): the API role, its auth routes' login, its background threads' login.
set -eu
umask 077
{
  printf '"tenant_api" "%s"\n' "${API_DB_PASSWORD:?API_DB_PASSWORD is required}"
  printf '"tenant_login" "%s"\n' "${LOGIN_DB_PASSWORD:?LOGIN_DB_PASSWORD is required}"
  printf '"tenant_api_jobs" "%s"\n' "${JOBS_DB_PASSWORD:?JOBS_DB_PASSWORD is required}"
} > /etc/pgbouncer/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
