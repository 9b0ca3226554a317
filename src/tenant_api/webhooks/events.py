"""The events a webhook can subscribe to, and the scope area a receiver needs for each.

Written by the outbox trigger (policies/webhook_event.sql), which must produce exactly
these (tests/areas/test_webhooks.py compares the trigger definitions with this catalog):

* ``<entity>.<status>`` when a task, job, computer-use task or robot macro execution is
  created (in its initial status) or changes status;
* ``conversation_message.created``; ``invite.accepted`` / ``invite.declined``;
* ``token.created`` / ``token.revoked`` / ``token.rotated`` (API tokens, not sessions).

A webhook lists exact types, families (``job.*``) or everything (``*``).
"""

from __future__ import annotations

from tenant_api.errors import invalid
from tenant_api.resources.desktops import EXECUTION_LIFECYCLE
from tenant_api.resources.jobs import JOB_LIFECYCLE
from tenant_api.resources.tasks import CUT_LIFECYCLE, TASK_LIFECYCLE

# entity -> (scope area a receiver needs, how its events are made)
SOURCES: dict[str, tuple[str, str]] = {
    "task": ("tasks", "status"),
    "job": ("tasks", "status"),
    "computer_use_task": ("tasks", "status"),
    "robot_macro_execution": ("desktops", "status"),
    "conversation_message": ("conversations", "created"),
    "invite": ("members", "invite"),
    "token": ("tokens", "token"),
}
_STATES = {
    "task": TASK_LIFECYCLE.states,
    "job": JOB_LIFECYCLE.states,
    "computer_use_task": CUT_LIFECYCLE.states,
    "robot_macro_execution": EXECUTION_LIFECYCLE.states,
}
_OTHERS = {
    "conversation_message": ("created",),
    "invite": ("accepted", "declined"),
    "token": ("created", "revoked", "rotated"),
}

EVENT_TYPES: frozenset[str] = frozenset(
    [f"{entity}.{state}" for entity, states in _STATES.items() for state in states]
    + [f"{entity}.{what}" for entity, whats in _OTHERS.items() for what in whats]
)
PATTERNS: frozenset[str] = frozenset({"*", *(f"{entity}.*" for entity in SOURCES)})


def check_event_types(types: list[str]) -> list[str]:
    """The subscription, de-duplicated and sorted; 422 naming the first unknown type."""
    for t in types:
        if t not in EVENT_TYPES and t not in PATTERNS:
            raise invalid("event_types", f"unknown event type {t!r} (known: {', '.join(sorted(PATTERNS))}, "
                                         "or an exact type such as job.succeeded; see docs/webhooks.md)")
    return sorted(set(types))
