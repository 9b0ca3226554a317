"""Helpers the tests import (never from conftest.py or another test module): tenants
and their credentials, database connections, the catalog-driven attacks, factories,
live servers."""
