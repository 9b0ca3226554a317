"""Agents (scope area ``agents``): the first project-level resource."""

import datetime as dt
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tenant_api.db.models import Agent, Project
from tenant_api.resources.base import Input, Resource

AgentStatus = Literal["active", "paused", "archived"]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
AgentType = Annotated[str, Meta(min_length=1, max_length=100)]


class AgentRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    name: str
    type: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime


class AgentCreate(Input):
    project_id: UUID
    name: Name
    type: AgentType = "assistant"
    status: AgentStatus = "active"


class AgentUpdate(Input):
    name: Name | UnsetType = UNSET
    type: AgentType | UnsetType = UNSET
    status: AgentStatus | UnsetType = UNSET


agents = Resource(
    name="agent", path="/v1/agents", model=Agent, area="agents",
    read=AgentRead, create=AgentCreate, update=AgentUpdate,
    parents={"project_id": Project},
    filters={"project_id": UUID, "status": AgentStatus, "type": str},
)
