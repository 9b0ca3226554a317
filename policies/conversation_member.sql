-- conversation_member: project-level, area conversations. Members are added and removed,
-- never changed: no UPDATE for the API role. Visible and written only with their
-- conversation (a DM's members to the DM's users only: policies/conversation.sql).
call app.tenant_table('public.conversation_member', area => 'conversations', project_column => 'project_id',
                      read_extra => 'exists (select from public.conversation c'
                                    ' where c.organization_id = conversation_member.organization_id'
                                    ' and c.id = conversation_member.conversation_id)',
                      write_extra => 'exists (select from public.conversation c'
                                     ' where c.organization_id = conversation_member.organization_id'
                                     ' and c.id = conversation_member.conversation_id)',
                      api_grants => 'select, insert, delete');

-- app.dm_member (policies/conversation.sql) asks who a DM names.
create policy dm_lookup on public.conversation_member for select to tenant_auth using (true);
grant select (organization_id, conversation_id, member_type, member_id) on public.conversation_member to tenant_auth;
