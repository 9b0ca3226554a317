-- task: project-level work item (scope area tasks). The standard pattern, plus its
-- status lifecycle enforced here for every path (the API checks it first, for a 409
-- naming both states): todo -> in_progress | cancelled; in_progress -> done | failed |
-- cancelled, or back to todo (unassigned / paused). done, failed, cancelled are final.
-- Must equal tenant_api.resources.tasks.TASK_LIFECYCLE (a test compares them).
call app.tenant_table('public.task', area => 'tasks', project_column => 'project_id');

drop trigger if exists guard_status on public.task;
create trigger guard_status before insert or update of status on public.task
  for each row execute function app.guard_status(
    'task', 'todo',
    '{todo>in_progress,todo>cancelled,in_progress>todo,in_progress>done,in_progress>failed,in_progress>cancelled}',
    '');
