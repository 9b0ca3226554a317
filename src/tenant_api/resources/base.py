"""The generic tenant resource: list / get / create / update / delete, written once.

Each resource module declares a ``Resource``: its model, schemas, scope area, the body
fields that reference parent rows, the query filters, and (only if it has rules of its
own) a service subclass. ``resource_router`` turns that into routes under ``/v1``.

Every query carries an explicit ``organization_id = <context>`` filter (here, once), so
the planner uses the organization-leading indexes and a future Citus cluster can route
each query to one shard. RLS is the guarantee underneath: were a filter ever missing, the
policies would still hide every other organization's row.

Reads (list, get) are the hot path: unless a resource's service overrides a read method
(or reads newest first), they run as SQLAlchemy Core statements compiled once per shape
and executed on the request's asyncpg connection (``ReadQueries``, ``read_transaction``),
rows going straight into the Read struct: BEGIN, auth.begin_request, the query, COMMIT.

Writes (create, update, delete) go through the service, whose hooks hold a resource's
rules (``check_parents``, ``before_write``, lifecycles), and its generic statements are
SQL compiled once per shape (``WriteQueries``) and run on the request's own connection,
in the transaction of its session: a parent check is one ``select exists``, a create one
``INSERT ... RETURNING``, an update one ``SELECT`` (visibility: 404) and one ``UPDATE ...
RETURNING`` (nothing returned: visible but not writable, 403), a delete likewise. The rows
come back as (transient) model instances, so hooks and handlers read them as before;
hooks may still query through the session, which shares the connection.
"""


import inspect
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar
from uuid import UUID

import msgspec
from advanced_alchemy.filters import StatementFilter
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar import Request, Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from sqlalchemy import bindparam, exists, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert as sa_insert
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api import idempotency
from tenant_api.auth.request import (
    ReadTransaction,
    hold_transaction,
    held_transaction,
    provide_db,
    read_transaction,
    write_transaction,
)
from tenant_api.db.context import Principal
from tenant_api.db.models.base import TenantBase, uuid7
from tenant_api.errors import ProblemError, conflict, invalid, not_found
from tenant_api.settings import Settings
# --- shared pieces kept importable from here (issue 14: they live in the modules named) ---
from tenant_api.inputs import Input as Input
from tenant_api.resources.pagination import DEFAULT_LIMIT, MAX_LIMIT, by_id, cut_page, decode_cursor
from tenant_api.resources.pagination import encode_cursor as encode_cursor
from tenant_api.resources.schemas import set_fields
# --- end of shared pieces ---

M = TypeVar("M", bound=TenantBase)

class TenantService(SQLAlchemyAsyncRepositoryService[M], Generic[M]):
    """CRUD within the request's organization. Subclasses add a resource's own rules."""

    label: ClassVar[str] = "row"
    parents: ClassVar[dict[str, type[TenantBase]]] = {}
    newest_first: ClassVar[bool] = False  # list order (histories read newest first)

    app_settings: Settings | None = None  # for rules that have settings (set by the generic routes)
    writes: ClassVar["WriteQueries"]  # set by service_for

    def __init__(self, session: AsyncSession, ctx: Principal) -> None:
        super().__init__(session=session, auto_expunge=False, auto_refresh=False)
        self.ctx = ctx
        self._driver: Any = None
        self._orm = True
        self.locked: set[UUID] = set()  # rows this request read under a row lock

    @classmethod
    def on_connection(cls, conn: Any, ctx: Principal) -> "TenantService[Any]":
        """A service for the fast write path (Resource.write_path): no session at all,
        every statement on ``conn``, the request's own transaction (write_transaction).
        Anything that reaches for the ORM (the repository, its session) fails loudly:
        such a resource must say write_path="orm"."""
        service = cls.__new__(cls)
        service._repository_instance = _NoOrm(cls.label)
        service.ctx = ctx
        service._driver = conn
        service._orm = False
        service.locked = set()
        return service

    @property
    def org(self) -> UUID:
        assert self.ctx.organization_id is not None
        return self.ctx.organization_id

    async def parent_scope(self, nest: "Nest | None", parent_id: UUID | None) -> dict[str, Any]:
        """For a nested resource (/v1/agents/{agent_id}/email-rules): the parent must be
        visible (else 404 naming it); returns the columns every child row gets from it
        (the link column and, e.g., the parent's project_id)."""
        if nest is None or parent_id is None:
            return {}
        if not self._orm:
            row = await WriteQueries.of(nest.model).select(await self.connection(), self.org, parent_id, {})
            if row is None:
                raise not_found(nest.label)
            return {nest.column: parent_id, **{c: row[c] for c in nest.inherit}}
        parent = await self.repository.session.scalar(
            select(nest.model).where(nest.model.organization_id == self.org, nest.model.id == parent_id)
        )
        if parent is None:
            raise not_found(nest.label)
        return {nest.column: parent_id, **{c: getattr(parent, c) for c in nest.inherit}}

    async def page(
        self, *extra: StatementFilter, limit: int, cursor: str | None, **filters: Any
    ) -> tuple[Sequence[M], str | None]:
        """Keyset pagination on the UUIDv7 id (creation order, or newest first): stable while rows are added.
        ``filters`` are equality filters (None = not filtered); ``extra`` any other filter."""
        keyset = by_id(self.model_type, descending=self.newest_first)
        equal = {k: v for k, v in filters.items() if v is not None}
        rows = await self.list(*extra, statement=keyset.query(select(self.model_type), cursor, limit),
                               organization_id=self.org, **equal)
        return keyset.page(rows, limit)

    async def get_visible(self, item_id: UUID, scope: dict[str, Any] | None = None) -> M:
        row = await self.get_one_or_none(organization_id=self.org, id=item_id)
        if row is None or any(getattr(row, k) != v for k, v in (scope or {}).items()):
            raise not_found(self.label)
        return row

    async def connection(self) -> Any:
        """The request's own asyncpg connection, in the session's transaction."""
        if self._driver is None:
            conn = await self.repository.session.connection()
            self._driver = (await conn.get_raw_connection()).driver_connection
        return self._driver

    async def check_parents(self, values: dict[str, Any]) -> None:
        """Body fields naming parent rows must name rows this credential can see.

        The composite foreign keys already make another organization's ids impossible;
        this turns that (and the project restriction) into a 422 naming the field."""
        for field_name, parent in self.parents.items():
            value = values.get(field_name)
            if value is None:
                continue
            if not await self.writes.exists(await self.connection(), parent, self.org, value):
                raise invalid(field_name, f"no {parent.__tablename__} with id {value}")

    async def before_write(self, values: dict[str, Any], existing: M | None) -> dict[str, Any]:
        """Hook for a resource's own rules (state machines, validation). Returns the values."""
        return values

    async def create_row(self, values: dict[str, Any], scope: dict[str, Any] | None = None) -> M:
        values = {**values, **(scope or {})}
        if type(self).before_write is TenantService.before_write:
            # No hook to run between the parent checks and the insert: one statement,
            # the row inserted only if every parent is visible (else the checks, in
            # order, name the field).
            parents = {f: (model, values[f]) for f, model in self.parents.items() if values.get(f) is not None}
            row = await self.writes.insert(await self.connection(),
                                           {"id": uuid7(), **values, "organization_id": self.org}, parents)
            if row is None:
                await self.check_parents(values)
                raise conflict("a parent row changed meanwhile; retry the request")
            return self.writes.instance(row)
        await self.check_parents(values)
        values = await self.before_write(values, None)
        row = await self.writes.insert(await self.connection(), {"id": uuid7(), **values, "organization_id": self.org})
        return self.writes.instance(row)

    async def visible_for_write(self, item_id: UUID, scope: dict[str, Any] | None = None, lock: bool = False) -> M:
        """The row an update or delete starts from (404 if invisible). A service with a
        get_visible of its own (extra filters) is asked; else one SELECT, with ``lock``
        one SELECT ... FOR UPDATE (the row locked to the end of the transaction; none
        returned: 404 if it is not visible either, else 403, visible but not writable)."""
        if type(self).get_visible is not TenantService.get_visible:
            return await self.get_visible(item_id, scope)
        conn = await self.connection()
        row = await self.writes.select(conn, self.org, item_id, scope or {}, lock=lock)
        if row is None:
            if lock and await self.writes.select(conn, self.org, item_id, scope or {}) is not None:
                raise self.not_writable()
            raise not_found(self.label)
        if lock:
            self.locked.add(item_id)
        return self.writes.instance(row)

    def locks_for(self, values: dict[str, Any]) -> bool:
        """Whether an update with these values reads its row under a lock (lifecycles)."""
        return False

    async def update_row(self, item_id: UUID, values: dict[str, Any], scope: dict[str, Any] | None = None) -> M:
        existing = await self.visible_for_write(item_id, scope, lock=self.locks_for(values))
        await self.check_parents(values)
        values = await self.before_write(values, existing)
        if not self.writes.columns_of(values):  # nothing to change: the row as it is
            return existing
        row = await self.writes.update(await self.connection(), self.org, existing.id, values)
        if row is None:
            # Visible but not writable for this credential (RLS matched 0 rows for the
            # UPDATE, e.g. a project-restricted credential on an organization-wide row).
            raise self.not_writable()
        self._forget(existing)
        return self.writes.instance(row)

    async def delete_row(self, item_id: UUID, scope: dict[str, Any] | None = None) -> None:
        existing = await self.visible_for_write(item_id, scope)
        if not await self.writes.delete(await self.connection(), self.org, existing.id):
            raise self.not_writable()  # visible, but RLS let this credential delete nothing
        self._forget(existing)

    async def lock_status(self, item_id: UUID) -> str:
        """The row's status, read under a row lock held to the end of the transaction
        (two concurrent moves serialize: the second is judged against the first's
        outcome). None visible to lock: visible but not writable, 403."""
        status = await self.writes.lock_status(await self.connection(), self.org, item_id)
        if status is None:
            raise self.not_writable()
        return str(status)

    def _forget(self, existing: M) -> None:
        """A row a service's own get_visible loaded through the session is stale once
        written here: out of the session, so nothing flushes it back."""
        if not self._orm:
            return
        session = self.repository.session
        if existing in session:
            session.expunge(existing)

    def not_writable(self) -> ProblemError:
        return ProblemError(403, f"this credential may not change this {self.label}")


class _NoOrm:
    """The repository of a service on the fast write path: there is none."""

    def __init__(self, label: str) -> None:
        self._label = label

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"resource {self._label}: its service used the ORM ({name}) on the fast write path; "
                           "say write_path='orm' or write the hook on self.connection()")


def service_for(model: type[M], label: str, parents: dict[str, type[TenantBase]] | None = None,
                base: type[TenantService] = TenantService) -> type[TenantService]:
    """A service class for ``model`` with its nested repository (advanced-alchemy style)."""
    repo = type(f"{model.__name__}Repository", (SQLAlchemyAsyncRepository,), {"model_type": model})
    attrs: dict[str, Any] = {"repository_type": repo, "label": label, "writes": WriteQueries.of(model)}
    if parents is not None:
        attrs["parents"] = parents
    return type(f"{model.__name__}Service", (base,), attrs)


@dataclass(frozen=True)
class Nest:
    """A resource that lives under a parent's path, e.g. /v1/agents/{agent_id}/email-rules."""

    param: str  # the path parameter: "agent_id"
    model: type[TenantBase]  # the parent model: Agent
    column: str  # the child's column holding the parent id: "agent_id"
    inherit: tuple[str, ...] = ()  # columns copied from the parent on create: ("project_id",)
    label: str = "parent"  # for "agent not found"


@dataclass
class Resource:
    """What a tenant resource declares; ``resource_router`` does the rest."""

    name: str  # singular, for messages and operation ids: "agent"
    path: str  # "/v1/agents"
    model: type[TenantBase]
    area: str  # scope area: reads need <area>:read, writes <area>:write
    read: type[msgspec.Struct]
    create: type[msgspec.Struct] | None = None
    update: type[msgspec.Struct] | None = None
    parents: dict[str, type[TenantBase]] = field(default_factory=dict)
    filters: dict[str, Any] = field(default_factory=dict)  # query param -> type, equality on that column
    service: type[TenantService] | None = None  # a subclass with the resource's own rules
    deletable: bool = True
    tag: str = ""
    nest: Nest | None = None  # set for resources under a parent's path; path then holds {<param>:uuid}
    # The resource's own actions (handlers taking ``service``), mounted in its router so
    # they share its path and dependencies: e.g. a create that returns a secret.
    actions: list[Any] = field(default_factory=list)
    # --- the read path (issue 14): stated, never inferred ---
    # "fast": list and get run as Core statements on the request's asyncpg connection
    # (ReadQueries), the hot path. "orm": the service's reads, for a service with read
    # rules of its own (it overrides page or get_visible, reads newest first) or a Read
    # struct with fields that are not columns. A resource that says "fast" but cannot be
    # read that way refuses to mount; tests/unit/test_read_paths.py lists every resource's.
    read_path: Literal["fast", "orm"] = "fast"
    # --- the write path (issue 9): stated, never inferred ---
    # "fast": create, update and delete run their service on the request's pooled asyncpg
    # connection (write_transaction: BEGIN, auth.begin_request, the service's statements,
    # COMMIT), no session. For a service whose hooks run on self.connection() only; one
    # that reaches for the ORM fails loudly. A POST carrying an Idempotency-Key still
    # takes the session (its response is stored in that transaction, idempotency.py).
    # "orm": the service on the request's session (hooks that query through the ORM).
    # tests/unit/test_write_paths.py lists every resource's.
    write_path: Literal["fast", "orm"] = "orm"

    def service_class(self) -> type[TenantService]:
        base = self.service or TenantService
        return service_for(self.model, self.name, self.parents, base)


class CompiledStatements:
    """Statements built with SQLAlchemy Core once per shape and compiled for asyncpg: a
    request looks its shape up and binds values by name (``order``: the parameters'
    names in the compiled statement's positional order)."""

    def __init__(self) -> None:
        self._dialect = asyncpg_dialect()
        self._compiled: dict[tuple[Any, ...], tuple[str, list[str]]] = {}

    def _sql(self, key: tuple[Any, ...], build: Any) -> tuple[str, list[str]]:
        found = self._compiled.get(key)
        if found is None:
            compiled = build().compile(dialect=self._dialect)
            found = self._compiled[key] = (str(compiled), list(compiled.positiontup or ()))
        return found

    @staticmethod
    def _equal(table: Any, names: tuple[str, ...]) -> list[Any]:
        """The organization filter (parameter "org") and equality on ``names`` ("eq_<name>")."""
        return [table.c.organization_id == bindparam("org"), *(table.c[n] == bindparam(f"eq_{n}") for n in names)]


class ReadQueries(CompiledStatements):
    """The read routes of one resource without the ORM.

    Statements are built with SQLAlchemy Core once per shape (which equality filters are
    set, with or without a cursor) and compiled for asyncpg; each request only looks its
    shape up and binds values. They select exactly the Read struct's columns and always
    filter on the request's organization, like the service does; RLS applies underneath.
    """

    # A service overriding any of these has read rules of its own: its resource keeps the
    # service's (ORM) read path.
    SERVICE_READS = ("get_visible", "page", "list", "get_one_or_none", "parent_scope")

    def __init__(self, res: "Resource") -> None:
        self.table = res.model.__table__
        self.columns = [self.table.c[name] for name in res.read.__struct_fields__]
        params = inspect.signature(res.read).parameters.values()
        positional = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        read = res.read
        self.build: Any = (lambda row: read(*row)) if positional else (lambda row: read(**row))
        self.nest = res.nest
        self.label = res.name
        super().__init__()

    @classmethod
    def for_resource(cls, res: "Resource", service: type["TenantService"]) -> "ReadQueries | None":
        if any(getattr(service, m) is not getattr(TenantService, m) for m in cls.SERVICE_READS):
            return None
        if service.newest_first:  # histories read newest first: the service's order
            return None
        columns = res.model.__table__.c
        fields = res.read.__struct_fields__
        nest_ok = res.nest is None or (res.nest.column in columns
                                       and all(c in res.nest.model.__table__.c for c in res.nest.inherit))
        if "id" not in fields or not all(f in columns for f in [*fields, *res.filters]) or not nest_ok:
            return None
        return cls(res)

    async def parent_scope(self, tx: ReadTransaction, parent_id: UUID | None) -> dict[str, Any]:
        """TenantService.parent_scope for a nested resource: the parent must be visible."""
        nest = self.nest
        if nest is None or parent_id is None:
            return {}
        parent = nest.model.__table__
        sql, order = self._sql(("parent",), lambda: select(*(parent.c[c] for c in nest.inherit), parent.c.id)
                               .where(*self._equal(parent, ("id",))))
        values = {"org": tx.principal.organization_id, "eq_id": parent_id}
        row = await tx.conn.fetchrow(sql, *[values[n] for n in order])
        if row is None:
            raise not_found(nest.label)
        return {nest.column: parent_id, **{c: row[c] for c in nest.inherit}}

    async def get(self, tx: ReadTransaction, item_id: UUID, scope: dict[str, Any]) -> Any:
        names = ("id", *sorted(scope))
        sql, order = self._sql(("get", names), lambda: select(*self.columns).where(*self._equal(self.table, names)))
        values = {"org": tx.principal.organization_id, "eq_id": item_id, **{f"eq_{k}": v for k, v in scope.items()}}
        row = await tx.conn.fetchrow(sql, *[values[n] for n in order])
        if row is None:
            raise not_found(self.label)
        return self.build(row)

    async def page(self, tx: ReadTransaction, limit: int, cursor: str | None,
                   equal: dict[str, Any]) -> tuple[list[Any], str | None]:
        """TenantService.page: keyset pagination on the UUIDv7 id."""
        names = tuple(sorted(k for k, v in equal.items() if v is not None))

        def build() -> Any:
            stmt = select(*self.columns).where(*self._equal(self.table, names))
            if cursor:
                stmt = stmt.where(self.table.c.id > bindparam("cursor"))
            return stmt.order_by(self.table.c.id).limit(bindparam("limit"))

        sql, order = self._sql(("page", names, bool(cursor)), build)
        values = {"org": tx.principal.organization_id, "limit": limit + 1,
                  "cursor": decode_cursor(cursor) if cursor else None, **{f"eq_{k}": equal[k] for k in names}}
        rows = await tx.conn.fetch(sql, *[values[n] for n in order])
        page, next_cursor = cut_page(rows, limit, lambda row: (row["id"],))
        return [self.build(r) for r in page], next_cursor


class WriteQueries(CompiledStatements):
    """The generic writes of one model (see the module doc) as SQL compiled once per
    shape, the column values bound as SQLAlchemy's own types would bind them (JSON
    serialized, ...). Always filtered on the request's organization; RLS applies
    underneath (a row another organization or a project restriction hides matches
    nothing)."""

    _by_model: ClassVar[dict[type, "WriteQueries"]] = {}

    def __init__(self, model: type[TenantBase]) -> None:
        self.model = model
        self.table: Any = model.__table__
        # What the ORM loads of a row: deferred columns (secrets: hashes, nonces) are
        # neither read nor returned, and the API role may have no grant to read them.
        deferred = {prop.columns[0].name for prop in sa_inspect(model).column_attrs if prop.deferred}
        self.loaded = [c for c in self.table.c if c.name not in deferred]
        super().__init__()
        types = {c.name: c.type.dialect_impl(self._dialect) for c in self.table.c}
        self._bind = {name: t.bind_processor(self._dialect) for name, t in types.items()}
        self._result = {c.name: proc for c in self.loaded
                        if (proc := types[c.name].result_processor(self._dialect, None))}
        self._manager = sa_inspect(model).class_manager

    @classmethod
    def of(cls, model: type[TenantBase]) -> "WriteQueries":
        found = cls._by_model.get(model)
        if found is None:
            found = cls._by_model[model] = cls(model)
        return found

    def columns_of(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values that are columns (others are the service's business, as they were
        the ORM's to ignore)."""
        return {k: v for k, v in values.items() if k in self._bind}

    def instance(self, row: Any) -> Any:
        """A model instance carrying a row (not in any session), each value as the ORM
        would have loaded it. Made as the ORM's loader makes one (an empty instance, its
        attributes filled in): the model's constructor records each value as a change
        and cost ten times more (bench/RESULTS.md)."""
        values = dict(row)
        for name, process in self._result.items():
            values[name] = process(values[name])
        instance = self._manager.new_instance()
        instance.__dict__.update(values)
        return instance

    def _args(self, order: list[str], values: dict[str, Any]) -> list[Any]:
        """Positional arguments; a column's value (parameter "v_<column>") bound as its type binds it."""
        args = []
        for name in order:
            value = values[name]
            if value is not None and name.startswith("v_") and (bind := self._bind[name[2:]]) is not None:
                value = bind(value)
            args.append(value)
        return args

    async def exists(self, conn: Any, parent: type[TenantBase], org: UUID, item_id: UUID, **equal: Any) -> bool:
        """Whether ``parent`` has a visible row ``item_id`` (and, with ``equal``, those column values)."""
        table: Any = parent.__table__
        names = tuple(sorted(equal))
        sql, order = self._sql(("exists", table.name, names),
                               lambda: select(exists().where(*self._equal(table, ("id", *names)))))
        values = {"org": org, "eq_id": item_id, **{f"eq_{n}": v for n, v in equal.items()}}
        return bool(await conn.fetchval(sql, *(values[n] for n in order)))

    @staticmethod
    def _shape(values: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any], tuple[str, ...]]:
        """(columns bound as parameters, SQL expressions a hook set (e.g. now()), their
        text for the statement cache's key)."""
        sql = {k: v for k, v in values.items() if isinstance(v, ClauseElement)}
        names = tuple(sorted(k for k in values if k not in sql))
        return names, sql, tuple(f"{k}={v}" for k, v in sorted(sql.items()))

    async def insert(self, conn: Any, values: dict[str, Any],
                     parents: dict[str, tuple[type[TenantBase], UUID]] | None = None) -> Any:
        """INSERT ... RETURNING the row; with ``parents`` (field -> (model, id)) only if
        each is visible (nothing returned otherwise)."""
        values = self.columns_of(values)
        names, sql_values, key = self._shape(values)
        checked = tuple(sorted(parents or {}))
        if not checked:
            sql, order = self._sql(("insert", names, key), lambda: sa_insert(self.table).values(
                {**{n: bindparam(f"v_{n}") for n in names}, **sql_values}).returning(*self.loaded))
            return await conn.fetchrow(sql, *self._args(order, {f"v_{k}": values[k] for k in names}))
        assert parents is not None and not sql_values

        def build() -> Any:
            conditions = []
            for field_name in checked:
                parent: Any = parents[field_name][0].__table__
                conditions.append(exists().where(parent.c.organization_id == bindparam("org"),
                                                 parent.c.id == bindparam(f"p_{field_name}")))
            row = select(*(bindparam(f"v_{n}", type_=self.table.c[n].type) for n in names)).where(*conditions)
            return sa_insert(self.table).from_select(list(names), row).returning(*self.loaded)

        sql, order = self._sql(("insert", names, checked, tuple(p[0].__name__ for p in parents.values())), build)
        return await conn.fetchrow(sql, *self._args(order, {
            "org": values["organization_id"], **{f"v_{k}": values[k] for k in names},
            **{f"p_{f}": parents[f][1] for f in checked}}))

    async def select(self, conn: Any, org: UUID, item_id: UUID, scope: dict[str, Any], lock: bool = False) -> Any:
        names = ("id", *sorted(scope))
        sql, order = self._sql(("select", names, lock), lambda: (
            select(*self.loaded).where(*self._equal(self.table, names)).with_for_update() if lock
            else select(*self.loaded).where(*self._equal(self.table, names))))
        return await conn.fetchrow(sql, *self._args(order, {"org": org, "eq_id": item_id,
                                                             **{f"eq_{k}": v for k, v in scope.items()}}))

    async def lock_status(self, conn: Any, org: UUID, item_id: UUID) -> Any:
        sql, order = self._sql(("lock_status",), lambda: select(self.table.c.status)
                               .where(*self._equal(self.table, ("id",))).with_for_update())
        return await conn.fetchval(sql, *self._args(order, {"org": org, "eq_id": item_id}))

    async def update(self, conn: Any, org: UUID, item_id: UUID, values: dict[str, Any]) -> Any:
        values = self.columns_of(values)
        names, sql_values, key = self._shape(values)
        sql, order = self._sql(("update", names, key), lambda: sa_update(self.table)
                               .where(*self._equal(self.table, ("id",)))
                               .values({**{n: bindparam(f"v_{n}") for n in names}, **sql_values})
                               .returning(*self.loaded))
        return await conn.fetchrow(sql, *self._args(order, {"org": org, "eq_id": item_id,
                                                             **{f"v_{k}": values[k] for k in names}}))

    async def delete(self, conn: Any, org: UUID, item_id: UUID) -> bool:
        sql, order = self._sql(("delete",), lambda: sa_delete(self.table)
                               .where(*self._equal(self.table, ("id",))).returning(self.table.c.id))
        return await conn.fetchval(sql, *self._args(order, {"org": org, "eq_id": item_id})) is not None


def _with_params(fn: Any, query: dict[str, Any], path: str | None) -> Any:
    """Give a handler that takes **kw an explicit signature, so Litestar parses,
    validates and documents each filter as a query parameter (and a nested resource's
    parent id as a path parameter)."""
    sig = inspect.signature(fn)
    kept = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typ | None)
        for name, typ in query.items()
    ]
    annotations = {name: typ | None for name, typ in query.items()}
    if path:
        extra.insert(0, inspect.Parameter(path, inspect.Parameter.KEYWORD_ONLY, annotation=UUID))
        annotations[path] = UUID
    fn.__signature__ = sig.replace(parameters=kept + extra)
    fn.__annotations__ = {**fn.__annotations__, **annotations}
    return fn


def to_read(schema: type[msgspec.Struct], row: Any) -> Any:
    return msgspec.convert(row, schema, from_attributes=True)


def resource_router(res: Resource) -> Router:
    Read = res.read
    Page = msgspec.defstruct(f"{Read.__name__}Page", [("items", list[Read]),  # type: ignore[valid-type]
                                                      ("next_cursor", str | None)])
    Service = res.service_class()
    read_scope, write_scope = f"{res.area}:read", f"{res.area}:write"
    tags = [res.tag or res.area]
    nest = res.nest
    parent_param = nest.param if nest else None

    async def provide_service(db: AsyncSession, ctx: Principal, state: State) -> TenantService:
        service = Service(db, ctx)
        service.app_settings = state.settings
        return service

    async def scope_of(service: TenantService, kw: dict[str, Any]) -> dict[str, Any]:
        return await service.parent_scope(nest, kw.pop(parent_param) if parent_param else None)

    async def list_items(
        service: TenantService,
        limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
        cursor: str | None = Parameter(default=None, max_length=64),
        **kw: Any,
    ) -> Page:  # type: ignore[valid-type]
        scope = await scope_of(service, kw)
        rows, next_cursor = await service.page(limit=limit, cursor=cursor, **kw, **scope)
        return Page(items=[to_read(Read, r) for r in rows], next_cursor=next_cursor)

    async def get_item(service: TenantService, item_id: UUID, **kw: Any) -> Read:  # type: ignore[valid-type]
        scope = await scope_of(service, kw)
        return to_read(Read, await service.get_visible(item_id, scope))

    fast = ReadQueries.for_resource(res, Service) if res.read_path == "fast" else None
    if res.read_path == "fast" and fast is None:
        raise RuntimeError(f"resource {res.name} says read_path='fast' but its service has read rules of its own "
                           "(page, get_visible, newest_first) or its Read struct fields that are not columns: "
                           "say read_path='orm'")
    if fast is not None:
        # The same routes on the request's asyncpg connection (see ReadQueries).

        async def list_items(  # type: ignore[misc]
            request: Request,
            limit: int = Parameter(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
            cursor: str | None = Parameter(default=None, max_length=64),
            **kw: Any,
        ) -> Page:  # type: ignore[valid-type]
            async with read_transaction(request) as tx:
                scope = await fast.parent_scope(tx, kw.pop(parent_param) if parent_param else None)
                items, next_cursor = await fast.page(tx, limit, cursor, {**kw, **scope})
            return Page(items=items, next_cursor=next_cursor)

        async def get_item(request: Request, item_id: UUID, **kw: Any) -> Read:  # type: ignore[misc,valid-type]
            async with read_transaction(request) as tx:
                scope = await fast.parent_scope(tx, kw.pop(parent_param) if parent_param else None)
                return await fast.get(tx, item_id, scope)

    def route(decorator: Any, path: str, scope: str, op: str, summary: str, fn: Any, query: dict[str, Any],
              **options: Any) -> Any:
        return decorator(path, opt={"scope": scope}, operation_id=f"{op}", summary=summary, tags=tags,
                         **options)(_with_params(fn, query, parent_param))

    # "/v1/agents/{agent_id:uuid}/email-rules" -> "agents_email_rules": unique per path
    plural = "_".join(p.replace("-", "_") for p in res.path.split("/")[2:] if p and not p.startswith("{"))
    handlers: list[Any] = [
        route(get, "/", read_scope, f"list_{plural}", f"List {res.name}s", list_items, res.filters),
        route(get, "/{item_id:uuid}", read_scope, f"get_{res.name}", f"Get a {res.name}", get_item, {}),
    ]

    dependencies = {"service": Provide(provide_service)}
    if res.write_path == "fast":
        if res.nest is not None and not all(c in res.nest.model.__table__.c for c in res.nest.inherit):
            raise RuntimeError(f"resource {res.name}: its parent's inherited columns are not columns: "
                               "say write_path='orm'")
        keyed_db = asynccontextmanager(provide_db)

        async def provide_write_service(request: Request, state: State) -> TenantService:
            """The service in the request's transaction: on its pooled asyncpg connection
            (write_transaction), or on the session when the POST carries an Idempotency-Key
            (the kept response commits with the change, idempotency.py). A dependency, as
            provide_db is, so the credential and scope are checked (401/403) before the
            body is validated (422), as on the ORM path; the transaction is held for the
            handler to end (auth.request.held_transaction)."""
            entered: Any
            if idempotency.pending(request) is None:
                entered = write_transaction(request)
                tx = await entered.__aenter__()
                service = Service.on_connection(tx.conn, tx.principal)
            else:
                entered = keyed_db(request, state)
                db = await entered.__aenter__()
                service = Service(db, db.info["principal"])
            hold_transaction(request, entered)
            service.app_settings = state.settings
            return service

        # A keyed POST goes to provide_db, which binds the key to its transaction
        # (tests/api/test_idempotency.py checks every POST).
        provide_write_service.keyed_through = provide_db  # type: ignore[attr-defined]
        dependencies["write_service"] = Provide(provide_write_service)

        if res.create is not None:
            Create = res.create

            async def create_item(request: Request, write_service: TenantService,
                                  data: Create, **kw: Any) -> Read:  # type: ignore[valid-type]
                async with held_transaction(request):
                    scope = await scope_of(write_service, kw)
                    return to_read(Read, await write_service.create_row(msgspec.structs.asdict(data), scope))

        if res.update is not None:
            Update = res.update

            async def update_item(request: Request, write_service: TenantService, item_id: UUID,
                                  data: Update, **kw: Any) -> Read:  # type: ignore[valid-type]
                async with held_transaction(request):
                    scope = await scope_of(write_service, kw)
                    return to_read(Read, await write_service.update_row(item_id, set_fields(data), scope))

        async def delete_item(request: Request, write_service: TenantService, item_id: UUID, **kw: Any) -> None:
            async with held_transaction(request):
                scope = await scope_of(write_service, kw)
                await write_service.delete_row(item_id, scope)
    else:
        if res.create is not None:
            Create = res.create

            async def create_item(service: TenantService, data: Create, **kw: Any) -> Read:  # type: ignore[valid-type,misc]
                scope = await scope_of(service, kw)
                return to_read(Read, await service.create_row(msgspec.structs.asdict(data), scope))

        if res.update is not None:
            Update = res.update

            async def update_item(service: TenantService, item_id: UUID, data: Update,  # type: ignore[valid-type,misc]
                                  **kw: Any) -> Read:  # type: ignore[valid-type]
                scope = await scope_of(service, kw)
                return to_read(Read, await service.update_row(item_id, set_fields(data), scope))

        async def delete_item(service: TenantService, item_id: UUID, **kw: Any) -> None:  # type: ignore[misc]
            scope = await scope_of(service, kw)
            await service.delete_row(item_id, scope)

    if res.create is not None:
        handlers.append(route(post, "/", write_scope, f"create_{res.name}", f"Create a {res.name}", create_item, {}))
    if res.update is not None:
        handlers.append(route(patch, "/{item_id:uuid}", write_scope, f"update_{res.name}", f"Update a {res.name}",
                              update_item, {}))
    if res.deletable:
        handlers.append(route(delete, "/{item_id:uuid}", write_scope, f"delete_{res.name}", f"Delete a {res.name}",
                              delete_item, {}))

    return Router(path=res.path, route_handlers=[*handlers, *res.actions], dependencies=dependencies)
