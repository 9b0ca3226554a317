-- notification_preference: a member's own settings, visible to and changeable by that
-- user only. PUT upserts one row per channel; an unchanged channel only touches
-- updated_at, which is noise (no audit row).
call app.tenant_table('public.notification_preference', area => 'notifications',
                      read_extra => 'user_id = (select app.current_user_id())',
                      write_extra => 'user_id = (select app.current_user_id())',
                      noise_columns => '{updated_at}');
