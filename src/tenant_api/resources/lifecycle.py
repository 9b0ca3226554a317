"""Status state machines: the service's check (409 naming both states) and its row lock.

The database enforces the same moves (app.guard_status, attached in policies/<table>.sql);
tests compare the two. The service checks first so the client gets a 409 that names
both states instead of a constraint error.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tenant_api.db.models.base import TenantBase
from tenant_api.errors import conflict
from tenant_api.resources.base import TenantService

M = TypeVar("M", bound=TenantBase)


@dataclass(frozen=True)
class Lifecycle:
    entity: str  # for messages: "task"
    initial: str  # every new row starts here
    moves: dict[str, frozenset[str]]  # from -> allowed targets; states without moves out are final

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.moves) | frozenset().union(*self.moves.values())

    @property
    def final(self) -> frozenset[str]:
        return frozenset(s for s in self.states if not self.moves.get(s))

    def allows(self, old: str, new: str) -> bool:
        return old == new or new in self.moves.get(old, frozenset())

    def check(self, old: str, new: str) -> None:
        if not self.allows(old, new):
            raise conflict(f"cannot move {self.entity} from {old} to {new}", **{"from": old, "to": new})


# table -> its lifecycle: a catalog test checks each against the table's guard_status
# trigger (policies/<table>.sql), and that no guarded table is missing here.
LIFECYCLES: dict[str, Lifecycle] = {}


def lifecycle(entity: str, initial: str, moves: dict[str, str], *, table: str) -> Lifecycle:
    """lifecycle("job", "queued", {"queued": "running cancelled", ...}, table="job")"""
    machine = Lifecycle(entity, initial, {k: frozenset(v.split()) for k, v in moves.items()})
    LIFECYCLES[table] = machine
    return machine


class LifecycleService(TenantService[M]):
    """A TenantService whose rows carry ``status`` moving along ``lifecycle``."""

    lifecycle: ClassVar[Lifecycle]

    def locks_for(self, values: dict[str, Any]) -> bool:
        return "status" in values

    async def before_write(self, values: dict[str, Any], existing: M | None) -> dict[str, Any]:
        if existing is not None and "status" in values:
            # The row locked and its status read under the lock, so two concurrent moves
            # serialize and the second is judged against the first's outcome, not a
            # stale read (update_row read it so; a service's own get_visible did not).
            current = existing.status if existing.id in self.locked else await self.lock_status(existing.id)  # type: ignore[attr-defined]
            self.lifecycle.check(current, values["status"])
        return values
