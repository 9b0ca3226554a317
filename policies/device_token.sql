-- device_token: a member's push tokens, visible to and changeable by that user only
-- (not even admins: they are the user's devices). The push token is shown to its own
-- user but kept out of the organization-wide audit log. Registering a token again is
-- an upsert that only touches updated_at: noise, no audit row.
call app.tenant_table('public.device_token', area => 'notifications',
                      read_extra => 'user_id = (select app.current_user_id())',
                      write_extra => 'user_id = (select app.current_user_id())',
                      secret_columns => '{token}',
                      noise_columns => '{updated_at}');
