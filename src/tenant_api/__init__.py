"""tenant-api: the multi-tenant API of an AI-agent platform."""
