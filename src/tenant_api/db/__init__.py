"""Database access: engines, the request context, the embedded server, migrations."""
