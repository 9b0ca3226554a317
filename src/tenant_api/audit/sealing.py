"""Tamper evidence: sealing (background), verification (auditors), purge (maintenance).

The trail of an organization is the ``audit_event`` view (data changes and usage
records) in (txid, id) order. ``app.audit_seal`` (SQL, policies/audit_seal.sql) cuts the
final, unsealed events into blocks and chains them with SHA-256; ``verify`` recomputes
everything it can from the rows as the auditor's own request (RLS applies) and reports
intact, or the first event altered, deleted or inserted out of band. Events not sealed
yet are counted, never claimed verified.

What it cannot catch alone: someone able to rewrite both the events and every later
seal (a database superuser who recomputes the chain), or who deletes the newest seals
with their events. Keep the ``head`` (seq and digest) that verify returns outside the
database: a later verify whose chain no longer contains that head proves a rewrite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

ZERO_KEY = (0, UUID(int=0))
MAX_PROBLEMS = 100


def genesis(org: UUID) -> bytes:
    """Mirror of app.audit_genesis: the chain of each organization starts from its id."""
    return hashlib.sha256(f"tenant-api audit trail {org}".encode()).digest()


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def seal(url: str, *, organization_id: UUID | None = None, block_size: int = 1000) -> list[dict[str, Any]]:
    """Seal every final, unsealed event (of every organization, or one): one short
    transaction per organization. For `tenant-api audit seal` and the scheduler; runs as
    the API role (DATABASE_URL) or the owner. Returns what it sealed; an organization
    another sealer is busy with is skipped (blocks = -1) and sealed by the next run."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        orgs = [organization_id] if organization_id else [
            r[0] for r in await conn.fetch("select * from app.audit_seal_candidates()")]
        out = []
        for org in orgs:
            row = await conn.fetchrow("select blocks, events from app.audit_seal($1, $2)", org, block_size)
            if row["blocks"]:
                out.append({"organization_id": str(org), "blocks": row["blocks"], "events": row["events"]})
        return out
    finally:
        await conn.close()


async def purge(owner_url: str, *, before: dt.datetime, organization_id: UUID | None = None) -> list[dict[str, Any]]:
    """Delete sealed events older than ``before`` (whole blocks), leaving a purge record
    in each chain; with no organization given, also the unattributed security events.
    One transaction per organization. The owner only (OWNER_DATABASE_URL)."""
    conn = await asyncpg.connect(_dsn(owner_url))
    try:
        orgs = [organization_id] if organization_id else [
            r[0] for r in await conn.fetch("select * from app.audit_purge_candidates($1)", before)]
        out = []
        for org in orgs:
            row = await conn.fetchrow("select purged_blocks, purged_events from app.audit_purge($1, $2)", before, org)
            if row["purged_blocks"]:
                out.append({"organization_id": str(org), "blocks": row["purged_blocks"],
                            "events": row["purged_events"]})
        if organization_id is None:
            row = await conn.fetchrow("select purged_events from app.audit_purge($1, null)", before)
            out.append({"unattributed_security_events": row["purged_events"]})
        return out
    finally:
        await conn.close()


@dataclass
class Problem:
    problem: str  # altered | deleted | inserted | seal_altered | seal_missing | seal_chain_broken
    event_id: UUID | None = None
    seal_seq: int | None = None
    detail: str = ""


@dataclass
class Report:
    status: str = "intact"
    verified_events: int = 0
    verified_blocks: int = 0
    purged_events: int = 0
    unsealed_events: int = 0
    problems: list[Problem] = field(default_factory=list)
    head_seq: int | None = None
    head_digest: str | None = None
    head_sealed_at: dt.datetime | None = None

    def add(self, problem: Problem) -> None:
        self.status = "tampered"
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


_SEALS = text(
    "select seq, kind, last_txid, last_id, event_count, first_occurred_at,"
    " last_occurred_at, purged_through_seq, previous_digest, digest, sealed_at"
    " from audit_seal where organization_id = :org order by seq"
)
_BLOCK = text("select event_ids, event_hashes from audit_seal where organization_id = :org and seq = :seq")
_EVENTS_BETWEEN = text(
    "select id, sha256(convert_to(content::text, 'UTF8')) as h from audit_event"
    " where organization_id = :org"
    " and (txid, id) > (cast(:lo_txid as xid8), :lo_id) and (txid, id) <= (cast(:hi_txid as xid8), :hi_id)"
    " order by txid, id"
)
_IN_PURGED = text(
    "select id from audit_event where organization_id = :org"
    " and (txid, id) <= (cast(:hi_txid as xid8), :hi_id) order by txid, id limit :n"
)
_UNSEALED = text(
    "select count(*) from audit_event where organization_id = :org"
    " and (txid, id) > (cast(:lo_txid as xid8), :lo_id)"
    " and (cast(:since as timestamptz) is null or occurred_at >= :since)"
    " and (cast(:until as timestamptz) is null or occurred_at < :until)"
)


def _compare(report: Report, seq: int, expected: list[tuple[UUID, bytes]], actual: list[tuple[UUID, bytes]]) -> None:
    """Walk the sealed (id, hash) list and the rows now in the block's range, in order."""
    exp_ids = {i for i, _ in expected}
    act_ids = {i for i, _ in actual}
    done: set[UUID] = set()
    i = j = 0
    while i < len(expected) or j < len(actual):
        if i < len(expected) and expected[i][0] in done:
            i += 1
        elif j < len(actual) and actual[j][0] in done:
            j += 1
        elif i < len(expected) and j < len(actual) and expected[i][0] == actual[j][0]:
            if expected[i][1] != actual[j][1]:
                report.add(Problem("altered", actual[j][0], seq, "the event's content no longer matches its seal"))
            i += 1
            j += 1
        elif j < len(actual) and actual[j][0] not in exp_ids:
            report.add(Problem("inserted", actual[j][0], seq, "not in the seal of its range: written out of band"))
            j += 1
        elif i < len(expected) and expected[i][0] not in act_ids:
            report.add(Problem("deleted", expected[i][0], seq, "sealed, but no longer in the trail"))
            i += 1
        else:  # present in both, out of order: its ordering key was changed
            moved = actual[j][0]
            report.add(Problem("altered", moved, seq, "the event was moved within the trail"))
            done.add(moved)
            j += 1


async def verify(db: AsyncSession, org: UUID, since: dt.datetime | None = None,
                 until: dt.datetime | None = None) -> Report:
    """Verify the organization's trail, as the caller (RLS: audit:read)."""
    report = Report()
    seals = (await db.execute(_SEALS, {"org": org})).all()
    by_seq = {s.seq: s for s in seals}

    # 1. The chain of seals itself: contiguous, each linked to the one before.
    previous = genesis(org)
    for expected_seq, s in enumerate(seals, start=1):
        if s.seq != expected_seq:
            report.add(Problem("seal_missing", None, expected_seq, f"seal {expected_seq} is missing"))
            break
        if bytes(s.previous_digest) != previous:
            report.add(Problem("seal_chain_broken", None, s.seq, "does not link to the seal before it"))
        if s.kind == "purge":
            block = by_seq.get(s.purged_through_seq)
            recomputed = hashlib.sha256(previous + b"purge" + s.purged_through_seq.to_bytes(8, "big")
                                        + (bytes(block.digest) if block else b"")).digest()
            if block is None or block.kind != "block" or recomputed != bytes(s.digest):
                report.add(Problem("seal_altered", None, s.seq, "purge record does not match what it purged"))
            report.purged_events += s.event_count
        previous = bytes(s.digest)
    if seals:
        head = seals[-1]
        report.head_seq, report.head_digest, report.head_sealed_at = head.seq, bytes(head.digest).hex(), head.sealed_at

    # 2. Purged ranges must be empty: anything there now was put there out of band.
    purged_through = max((s.purged_through_seq for s in seals if s.kind == "purge"), default=0)
    if purged_through in by_seq:
        end = by_seq[purged_through]
        for (event_id,) in (await db.execute(_IN_PURGED, {"org": org, "hi_txid": end.last_txid,
                                                           "hi_id": end.last_id, "n": MAX_PROBLEMS})).all():
            report.add(Problem("inserted", event_id, purged_through, "inside a purged range: written out of band"))

    # 3. Each sealed block overlapping the period: its rows against its seal. A block
    #    covers every key after the previous block's last one, so blocks tile the trail.
    previous_digest = {s.seq: bytes(s.previous_digest) for s in seals}
    lo = ZERO_KEY
    for s in seals:
        if s.kind != "block":
            continue
        block_lo, lo = lo, (s.last_txid, s.last_id)
        if s.seq <= purged_through:
            continue
        if (since and s.last_occurred_at < since) or (until and s.first_occurred_at >= until):
            continue
        ids, hashes = (await db.execute(_BLOCK, {"org": org, "seq": s.seq})).one()
        hashes = [bytes(h) for h in hashes]
        if hashlib.sha256(previous_digest[s.seq] + b"".join(hashes)).digest() != bytes(s.digest):
            report.add(Problem("seal_altered", None, s.seq, "the seal's hashes do not match its digest"))
        rows = (await db.execute(_EVENTS_BETWEEN, {"org": org, "lo_txid": block_lo[0], "lo_id": block_lo[1],
                                                   "hi_txid": lo[0], "hi_id": lo[1]})).all()
        _compare(report, s.seq, list(zip(ids, hashes, strict=False)), [(r.id, bytes(r.h)) for r in rows])
        report.verified_blocks += 1
        report.verified_events += len(rows)

    # 4. What is not sealed yet: counted, not verifiable until the next seal.
    report.unsealed_events = (await db.execute(_UNSEALED, {"org": org, "lo_txid": lo[0], "lo_id": lo[1],
                                                           "since": since, "until": until})).scalar_one()
    return report
