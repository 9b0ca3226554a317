"""Robot clients' WebSocket and the desktop_connection rows that track it.

``/v1/desktop-connections/ws?vm_id=<uuid>``: a robot client connects with a credential
holding ``desktops:write`` (Authorization header, or where headers cannot be set the
subprotocols ``tenant-api.v1, bearer.<credential>``: never in the URL). The handler
works like the HTTP path but in short transactions of its own, each begun as the
socket's credential (so auth.begin_request re-checks it, RLS applies and the audit log
attributes every write to the token): one to open the row, one per heartbeat write,
one to close it. The socket never holds a transaction or a pooled connection while idle.

Rows a handler could not close (the process died) are closed by the reaper
(auth.reap_desktop_connections, policies/desktop_connection.sql), run at start-up,
every ``reap_interval_seconds`` and at shutdown. Protocol and thresholds:
docs/desktops.md.
"""

import asyncio
import datetime as dt
import logging
import socket as _socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal
from uuid import UUID, uuid4

import msgspec
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.datastructures import State
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tenant_api.auth.credentials import WEBSOCKET_SUBPROTOCOL
from tenant_api.auth.request import open_context_session, refuse
from tenant_api.db.context import Principal
from tenant_api.errors import database_unavailable, log_failure
from tenant_api.db.models import DesktopConnection, DesktopVirtualMachine
from tenant_api.inputs import MAX_JSON_DEPTH, JsonTooDeep, decode_json
from tenant_api.resources.base import Resource
from tenant_api.settings import DesktopSettings
from tenant_api.routing import Routes
from tenant_api.tasks import task_during

log = logging.getLogger("tenant_api.desktops")

SCOPE = "desktops:write"
_TRY_AGAIN = 1013  # RFC 6455 "Try Again Later": the database is unavailable
ConnectionStatus = Literal["connected", "disconnected"]


class DesktopConnectionRead(msgspec.Struct):
    id: UUID
    project_id: UUID
    vm_id: UUID
    token_id: UUID
    api_instance_id: str
    status: str
    connected_at: dt.datetime
    last_seen_at: dt.datetime
    disconnected_at: dt.datetime | None
    close_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


# Read-only over HTTP: rows are written by the WebSocket handler and the reaper only.
desktop_connections = Resource(
    name="desktop_connection", path="/v1/desktop-connections", model=DesktopConnection, area="desktops",
    read=DesktopConnectionRead, deletable=False,
    filters={"vm_id": UUID, "status": ConnectionStatus, "project_id": UUID},
)


class Refused(Exception):
    """Close the socket with an application close code (4000 + the HTTP status it mirrors)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@asynccontextmanager
async def credential_transaction(socket: WebSocket) -> AsyncIterator[tuple[AsyncSession, Principal]]:
    """One transaction as the socket's credential; refuses it if it is no longer valid
    or has lost the scope (a revoked token's socket is closed at its next heartbeat)."""
    state = socket.scope["state"]
    session, principal = await open_context_session(socket.app.state, state["credential"], state.get("request_id"))
    try:
        if not principal.ok:
            raise Refused(4401, refuse(state, principal))
        if not principal.has_scope(SCOPE):
            raise Refused(4403, f"missing scope: {SCOPE}")
        yield session, principal
        await session.commit()
    finally:
        await session.close()  # rolls back whatever was not committed


def _vm_id(socket: WebSocket) -> UUID:
    try:
        return UUID(socket.query_params.get("vm_id", ""))
    except ValueError:
        raise Refused(4400, "vm_id: a UUID query parameter is required") from None


async def open_connection(socket: WebSocket, vm_id: UUID) -> UUID:
    async with credential_transaction(socket) as (db, ctx):
        vm = await db.scalar(select(DesktopVirtualMachine).where(
            DesktopVirtualMachine.organization_id == ctx.organization_id, DesktopVirtualMachine.id == vm_id))
        if vm is None:
            raise Refused(4404, "desktop_vm not found")
        if vm.status in ("terminated", "failed"):
            raise Refused(4409, f"the VM is {vm.status}")
        row = DesktopConnection(organization_id=ctx.organization_id, project_id=vm.project_id, vm_id=vm.id,
                                token_id=ctx.token_id, api_instance_id=socket.app.state.desktop_instance_id)
        db.add(row)
        await db.flush()
        return row.id


def _this_row(ctx: Principal, connection_id: UUID) -> Any:
    return update(DesktopConnection).where(
        DesktopConnection.organization_id == ctx.organization_id,
        DesktopConnection.id == connection_id,
        DesktopConnection.status == "connected",
    )


async def touch(socket: WebSocket, connection_id: UUID) -> None:
    async with credential_transaction(socket) as (db, ctx):
        result = await db.execute(_this_row(ctx, connection_id).values(last_seen_at=func.now()))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise Refused(4409, "this connection was closed by the server (reaped); reconnect")


async def close_connection(socket: WebSocket, connection_id: UUID, reason: str) -> None:
    """Mark the row closed, as the same credential. If the credential is no longer valid
    the row cannot be closed with it: the reaper closes rows of revoked or expired
    credentials at its next run."""
    try:
        async with credential_transaction(socket) as (db, ctx):
            await db.execute(_this_row(ctx, connection_id).values(
                status="disconnected", disconnected_at=func.now(), close_reason=reason))
    except Refused:
        pass
    except Exception as exc:
        log_failure(log, "could not close desktop connection %s; the reaper will", exc, connection_id)


async def converse(socket: WebSocket, connection_id: UUID, cfg: DesktopSettings) -> str:
    """The echo/ack loop. Returns the close reason."""
    last_touch = time.monotonic()
    while True:
        try:
            async with asyncio.timeout(cfg.idle_timeout_seconds):
                message = await socket.receive()
        except TimeoutError:
            await socket.close(code=4408, reason=f"idle for {cfg.idle_timeout_seconds:g}s: send a ping every "
                                                 f"{cfg.ping_interval_seconds:g}s")
            return "idle_timeout"
        if message["type"] == "websocket.disconnect":
            return "client_closed"
        if time.monotonic() - last_touch >= cfg.touch_interval_seconds:
            await touch(socket, connection_id)
            last_touch = time.monotonic()
        if message["type"] != "websocket.receive":
            continue
        try:
            kind = decode_json(message.get("text") or message.get("bytes") or b"null").get("type")
        except JsonTooDeep:
            await socket.send_json({"type": "error", "detail": f"JSON nested deeper than {MAX_JSON_DEPTH} levels"})
            continue
        except (msgspec.DecodeError, AttributeError):
            kind = None
        if kind == "ping":
            await socket.send_json({"type": "pong"})
        else:
            await socket.send_json({"type": "error", "detail": 'expected a JSON object {"type": "ping"}'})


class Ping(msgspec.Struct, tag_field="type", tag="ping"):
    """Client -> server, at least every ping_interval seconds."""


class Connected(msgspec.Struct, tag_field="type", tag="connected"):
    connection_id: UUID
    ping_interval: float
    idle_timeout: float


class Pong(msgspec.Struct, tag_field="type", tag="pong"):
    pass


class SocketError(msgspec.Struct, tag_field="type", tag="error"):
    detail: str


# How the OpenAPI document describes this socket (x-websockets, tenant_api.contract).
SOCKET_DOC = {
    "query": {"vm_id": {"type": "string", "format": "uuid", "required": True}},
    "messages": {"client": [Ping], "server": [Connected, Pong, SocketError]},
}


@websocket("/ws", opt={"scope": SCOPE, **SOCKET_DOC})
async def robot_connection(socket: WebSocket) -> None:
    """A robot client's connection to its desktop VM (docs/desktops.md).

    Authenticate with `Authorization: Bearer <credential>` (desktops:write) or, where a
    client cannot set headers (browsers), with the subprotocols
    `Sec-WebSocket-Protocol: tenant-api.v1, bearer.<credential>` (the server selects
    tenant-api.v1); never in the URL. After the handshake the server sends `connected`;
    the client sends `ping` at least every `ping_interval` seconds and gets `pong`.
    Refusals are sent after the handshake, as close codes a client can read: 4400 bad
    vm_id, 4401 unknown/revoked/expired credential, 4403 missing scope, 4404 VM not found
    (another organization's or project's included), 4409 VM terminated, 4408 idle for
    idle_timeout. A server shutting down closes with 1001, and 1013 (try again later)
    means the database is unavailable: reconnect."""
    cfg: DesktopSettings = socket.app.state.settings.desktops
    offered = [p.strip() for p in socket.headers.get("sec-websocket-protocol", "").split(",")]
    await socket.accept(subprotocols=WEBSOCKET_SUBPROTOCOL if WEBSOCKET_SUBPROTOCOL in offered else None)
    try:
        connection_id = await open_connection(socket, _vm_id(socket))
    except Refused as refused:
        await socket.close(code=refused.code, reason=refused.reason)
        return
    except Exception as exc:
        if not database_unavailable(exc):
            log.exception("desktop connection could not open")
        with suppress(Exception):
            await socket.close(code=_TRY_AGAIN if database_unavailable(exc) else 1011, reason="retry later")
        return
    reason = "server_error"
    drain = socket.app.state.drain
    try:
        with drain.track_socket():  # a graceful shutdown cancels this task (ops/shutdown.py)
            await socket.send_json({"type": "connected", "connection_id": str(connection_id),
                                    "ping_interval": cfg.ping_interval_seconds,
                                    "idle_timeout": cfg.idle_timeout_seconds})
            reason = await converse(socket, connection_id, cfg)
    except Refused as refused:
        reason = "credential_refused" if refused.code in (4401, 4403) else "reaped"
        with suppress(Exception):
            await socket.close(code=refused.code, reason=refused.reason)
    except asyncio.CancelledError:
        reason = "server_shutdown"
        if not drain.draining:
            raise
        # Our own drain cancelled us: close as "going away" (the client reconnects to
        # another instance) and end normally, no traceback.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        with suppress(Exception):
            await socket.close(code=1001, reason="server shutting down; reconnect")
    except Exception as exc:
        if database_unavailable(exc):
            # The row stays open until a later write (or the reaper) closes it; the
            # client reconnects when told to.
            reason = "database_unavailable"
            log.warning("desktop connection %s: database unavailable, closing with %d", connection_id, _TRY_AGAIN)
            with suppress(Exception):
                await socket.close(code=_TRY_AGAIN, reason="database unavailable; reconnect")
        elif isinstance(exc, (WebSocketDisconnect, OSError)):  # the client vanished while we were sending
            reason = "client_lost"
        else:
            log.exception("desktop connection %s failed", connection_id)
            with suppress(Exception):
                await socket.close(code=1011, reason="server error")
    finally:
        # Shielded: a server shutdown cancels this task, the row must still be closed.
        await asyncio.shield(close_connection(socket, connection_id, reason))


# The robot's socket, /v1/desktop-connections/ws, in the resource's router.
desktop_connections.actions.append(robot_connection)
ROUTES = Routes(resources=[desktop_connections])


# --- the reaper ------------------------------------------------------------------------

REAP = text("select auth.reap_desktop_connections(make_interval(secs => :stale), :instance)")


async def reap(state: State, instance: str | None = None) -> int:
    """Close stale rows (and, given an instance id, every open row of that instance).
    Runs with no credential, as the API process's background login (tenant_api_jobs):
    only the definer function can touch the rows, and only that login may call it."""
    async with state.jobs_sessionmaker() as session, session.begin():
        return await session.scalar(REAP, {"stale": state.settings.desktops.stale_after_seconds,
                                           "instance": instance}) or 0


async def _reap_logged(state: State, instance: str | None = None) -> None:
    try:
        if closed := await reap(state, instance):
            log.info("desktop reaper closed %d connection(s)", closed)
    except Exception as exc:
        log_failure(log, "desktop reaper failed; retrying in %ss", exc, state.settings.desktops.reap_interval_seconds)


async def _reap_forever(state: State) -> None:
    while True:
        await asyncio.sleep(state.settings.desktops.reap_interval_seconds)
        await _reap_logged(state)


def instance_id(cfg: DesktopSettings) -> str:
    return cfg.instance_id or f"{_socket.gethostname()}-{uuid4().hex[:12]}"


@asynccontextmanager
async def desktop_reaper(app: Litestar) -> AsyncIterator[None]:
    """Lifespan: reap at start-up (stale rows, and this instance's previous life if its
    id is stable), then periodically; at shutdown close whatever of ours is still open."""
    state = app.state
    await _reap_logged(state, state.desktop_instance_id)
    try:
        async with task_during(_reap_forever(state)):
            yield
    finally:
        await _reap_logged(state, state.desktop_instance_id)
