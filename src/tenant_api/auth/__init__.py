"""Credentials, passwords, scopes and the per-request transaction."""
