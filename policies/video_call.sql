-- video_call: a project's voice/video sessions.
call app.tenant_table('public.video_call', area => 'calls', project_column => 'project_id');
