-- /ready compares the database's alembic revision with the code's head (readiness.py):
-- the API role may read that one column, nothing else about migrations.
grant select (version_num) on public.alembic_version to tenant_api;
