"""A key that signs the request context, so the API role cannot forge one.

The context lives in settings any session may set with set_config(). Before this, a
connection as tenant_api (a leaked password, an injected statement) could claim any
organization by setting app.organization_id itself. Now the definer functions that
establish a context (auth.begin_request and friends, owned by tenant_auth) also store
a MAC of it, keyed by a secret only tenant_auth can read, and every context accessor
(app.current_organization_id() ...) checks it: a context set any other way is no
context at all, so it sees no rows and can write none. policies/context.sql holds the
functions; this revision holds the key.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from alembic import op

from tenant_api.db.policies import exec_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    exec_script(
        op.get_bind(),
        """
        create table auth.context_key (
            singleton boolean primary key default true check (singleton),
            -- 244 random bits from the server's CSPRNG (gen_random_uuid), hashed to 256.
            key bytea not null default sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'))
        );
        insert into auth.context_key default values;
        revoke all on auth.context_key from public;
        """,
    )


def downgrade() -> None:
    exec_script(op.get_bind(), "drop table auth.context_key cascade;")
