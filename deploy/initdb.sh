#!/usr/bin/env bash
# postgres image init hook: roles and database, as in `tenant-api bootstrap`.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -f /policies/roles.sql
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_pw="$OWNER_DB_PASSWORD" -v api_pw="$API_DB_PASSWORD" -v worker_pw="$WORKER_DB_PASSWORD" \
  -v jobs_pw="$JOBS_DB_PASSWORD" -v login_pw="$LOGIN_DB_PASSWORD" <<'SQL'
alter role tenant_owner password :'owner_pw';
alter role tenant_api password :'api_pw';
alter role tenant_worker password :'worker_pw';
alter role tenant_api_jobs password :'jobs_pw';
alter role tenant_login password :'login_pw';
create database tenant owner tenant_owner;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname tenant <<'SQL'
revoke all on database tenant from public;
grant connect, temporary on database tenant to tenant_owner;
grant connect on database tenant to tenant_api, tenant_worker, tenant_api_jobs, tenant_login;
revoke create on schema public from public;
alter schema public owner to tenant_owner;
SQL
