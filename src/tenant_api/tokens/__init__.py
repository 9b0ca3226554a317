"""API tokens: create (secret shown once), list, get, revoke, rotate."""
