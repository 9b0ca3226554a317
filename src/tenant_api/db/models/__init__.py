"""ORM models, one module per domain. Tables, keys and constraints are created by the
migrations; these mappings only describe them to SQLAlchemy."""

from tenant_api.db.models.base import Base, TenantBase
from tenant_api.db.models.identity import (
    Organization,
    OrganizationMembership,
    PlatformToken,
    Project,
    TokenAuditLog,
    UserAccount,
    Workspace,
)
from tenant_api.db.models.agents import Agent
from tenant_api.db.models.audit import AuditSeal, TokenUsage

__all__ = [
    "Agent",
    "AuditSeal",
    "Base",
    "Organization",
    "OrganizationMembership",
    "PlatformToken",
    "Project",
    "TenantBase",
    "TokenAuditLog",
    "TokenUsage",
    "UserAccount",
    "Workspace",
]
