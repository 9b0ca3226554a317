-- conversation: project-level, area conversations.
-- last_seq is bumped by every posted message (the message's own INSERT is audited) and
-- updated_at moves with it: both are noise, so posting leaves no UPDATE row here.
--
-- A direct message (kind DM) belongs to the users it names: only they see it, its
-- members and its messages (conversation_member.sql and conversation_message.sql read
-- through this table's policy), whatever their scopes; admins and auditors included.
-- A DM that names no user (between two agents) is the project's, like a channel. The
-- audit trail records who posted in a DM and when, never a body (docs/security.md).
create or replace function app.dm_member(p_org uuid, p_conversation uuid) returns boolean
  language sql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
  as $$
    select not exists (select from public.conversation_member cm
                        where cm.organization_id = p_org and cm.conversation_id = p_conversation
                          and cm.member_type = 'USER')
        or exists (select from public.conversation_member cm
                    where cm.organization_id = p_org and cm.conversation_id = p_conversation
                      and cm.member_type = 'USER' and cm.member_id = app.current_user_id())
  $$;

grant create on schema app to tenant_auth;
alter function app.dm_member(uuid, uuid) owner to tenant_auth;
revoke create on schema app from tenant_auth;
-- Policies call it as the querying role (the API role and its restricted twin); nobody else.
revoke all on function app.dm_member(uuid, uuid) from public;
grant execute on function app.dm_member(uuid, uuid) to tenant_api;

call app.tenant_table('public.conversation', area => 'conversations', project_column => 'project_id',
                      read_extra => 'kind <> ''DM'' or app.dm_member(organization_id, id)',
                      noise_columns => '{last_seq,updated_at}');
