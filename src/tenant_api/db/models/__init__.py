"""ORM models, one module per domain. Tables, keys and constraints are created by the
migrations; these mappings only describe them to SQLAlchemy."""

from tenant_api.db.models.base import Base, TenantBase
from tenant_api.db.models.identity import (
    Organization,
    OrganizationMembership,
    PlatformToken,
    Project,
    ServiceAccount,
    TokenAuditLog,
    UserAccount,
    Workspace,
)
from tenant_api.db.models.agents import Agent, AgentConversation, AgentEmailRule, AgentProfile, AgentTemplate
from tenant_api.db.models.billing import UserTrial
from tenant_api.db.models.calls import VideoCall
from tenant_api.db.models.notifications import DeviceToken, NotificationPreference
from tenant_api.db.models.services import Service
from tenant_api.db.models.conversations import Conversation, ConversationMember, ConversationMessage
from tenant_api.db.models.desktops import (
    DesktopConfig,
    DesktopConnection,
    DesktopVirtualMachine,
    RobotMacro,
    RobotMacroExecution,
)
from tenant_api.db.models.audit import AuditSeal, TokenUsage
from tenant_api.db.models.invites import InviteOutbox, ProjectInvite, ProjectMembership
from tenant_api.db.models.tasks import ComputerUseTask, Job, JobLog, JobSchedule, Task
from tenant_api.db.models.integrations import (
    IdempotencyKey,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)

__all__ = [
    "ServiceAccount",
    "Agent",
    "AuditSeal",
    "AgentConversation",
    "AgentEmailRule",
    "AgentProfile",
    "AgentTemplate",
    "Base",
    "DeviceToken",
    "NotificationPreference",
    "Conversation",
    "ConversationMember",
    "ConversationMessage",
    "DesktopConfig",
    "DesktopConnection",
    "DesktopVirtualMachine",
    "IdempotencyKey",
    "InviteOutbox",
    "ComputerUseTask",
    "Job",
    "JobLog",
    "JobSchedule",
    "Organization",
    "OrganizationMembership",
    "PlatformToken",
    "Project",
    "Service",
    "RobotMacro",
    "RobotMacroExecution",
    "ProjectInvite",
    "ProjectMembership",
    "Task",
    "TenantBase",
    "TokenAuditLog",
    "TokenUsage",
    "UserAccount",
    "UserTrial",
    "VideoCall",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
    "Workspace",
]
