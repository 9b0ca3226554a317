-- conversation_message: project-level, area conversations.
--   * History is immutable for the API role: SELECT and INSERT only. (Deleting a
--     conversation still removes its messages: foreign-key cascades run as the owner.)
--   * body is kept out of the audit log (secret_columns): the log records who posted
--     which message, not its content, so content deleted with its conversation does not
--     live on in the append-only log.
--   * read and written only with their conversation: a DM's messages belong to the
--     users the DM names (policies/conversation.sql), not to every conversations:read
--     holder of the project.
call app.tenant_table('public.conversation_message', area => 'conversations', project_column => 'project_id',
                      read_extra => 'exists (select from public.conversation c'
                                    ' where c.organization_id = conversation_message.organization_id'
                                    ' and c.id = conversation_message.conversation_id)',
                      write_extra => 'exists (select from public.conversation c'
                                     ' where c.organization_id = conversation_message.organization_id'
                                     ' and c.id = conversation_message.conversation_id)',
                      secret_columns => '{body}', api_grants => 'select, insert');

-- Live stream: every new message wakes the API's LISTEN connection. A notification is
-- visible to EVERY session listening on this server, whatever its role or RLS, so the
-- payload carries ids only, never the body. It is a hint, not data: each subscriber
-- then reads the messages in its own transaction, with its own credential, under RLS
-- (see docs/streams.md). Sent at commit, so a rolled-back message wakes nobody.
create or replace function app.notify_conversation_message() returns trigger
  language plpgsql
  set search_path = pg_catalog, pg_temp
  as $$
begin
  perform pg_notify('conversation_message', json_build_object(
    'organization_id', new.organization_id,
    'conversation_id', new.conversation_id,
    'id', new.id,
    'seq', new.seq)::text);
  return null;
end
$$;

drop trigger if exists notify_message on public.conversation_message;
create trigger notify_message after insert on public.conversation_message
  for each row execute function app.notify_conversation_message();
