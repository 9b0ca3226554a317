-- user_trial: the organization's trial (billing). Organization-wide, so like workspace
-- a project-restricted credential may read it but not change it.
call app.tenant_table('public.user_trial', area => 'billing',
                      write_extra => '(select app.unrestricted())');
