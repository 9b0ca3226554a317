"""Service accounts: an organization's own principals for integrations."""
