"""Tamper evidence: sealing, verify catching out-of-band changes, retention purge."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import asyncpg
import pytest

from tenant_api import cli
from tenant_api.audit import sealing
from tests.support.tenants import signup
from tests.support.usage import flush


async def activity(client, tenant, n: int = 3) -> None:
    for i in range(n):
        a = (await client.post("/v1/agents", headers=tenant.token_auth, json={"project_id": tenant.project_id,
                                                               "name": f"v{uuid.uuid4().hex[:6]}"})).json()
        await client.patch(f"/v1/agents/{a['id']}", headers=tenant.token_auth, json={"status": "paused"})
    await flush(client)


async def seal(database, tenant, block_size: int = 1000) -> list[dict]:
    # As the scheduler process's login: the scheduler's path.
    return await sealing.seal(database.worker_url, organization_id=uuid.UUID(tenant.organization_id), block_size=block_size)


async def verify(client, tenant, **params: str) -> dict:
    r = await client.get("/v1/audit/verify", headers=tenant.token_auth, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def trail(admin_conn, tenant) -> list[asyncpg.Record]:
    return await admin_conn.fetch("select kind, id, txid from audit_event where organization_id = $1"
                                  " order by txid, id", uuid.UUID(tenant.organization_id))


async def test_sealed_trail_verifies_and_unsealed_events_are_reported(client, database, admin_conn):
    t = await signup(client)
    await activity(client, t)
    events = await trail(admin_conn, t)
    (result,) = await seal(database, t, block_size=4)
    assert result["events"] == len(events) and result["blocks"] == -(-len(events) // 4)
    report = await verify(client, t)
    assert report["status"] == "intact" and report["first_problem"] is None
    assert (report["verified_events"], report["verified_blocks"], report["unsealed_events"]) == (
        len(events), result["blocks"], 0)
    assert report["head_seq"] == result["blocks"] and len(report["head_digest"]) == 64
    assert await seal(database, t) == []  # nothing new: nothing sealed twice

    await activity(client, t, 1)  # new events (and the verify request's own usage record)
    report = await verify(client, t)
    assert report["status"] == "intact" and report["unsealed_events"] >= 3
    (more,) = await seal(database, t, block_size=4)
    report = await verify(client, t)
    assert report["unsealed_events"] == 0 and report["verified_events"] == len(events) + more["events"]
    # Restricted to a period: blocks outside it are not re-read.
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert (await verify(client, t, since=future))["verified_blocks"] == 0


async def test_verify_catches_rows_changed_deleted_or_inserted_behind_the_api(client, database, admin_conn):
    t = await signup(client)
    await activity(client, t)
    await seal(database, t, block_size=5)
    org = uuid.UUID(t.organization_id)
    assert (await verify(client, t))["status"] == "intact"

    async def first_problem() -> tuple[str, str | None]:
        report = await verify(client, t)
        assert report["status"] == "tampered", report
        return report["first_problem"]["problem"], report["first_problem"]["event_id"]

    # 1. An edited change: the agent's name rewritten in the log.
    row = await admin_conn.fetchrow("select id, changes from token_audit_log where organization_id = $1"
                                    " and table_name = 'agent' order by txid, id limit 1", org)
    await admin_conn.execute("update token_audit_log set changes = changes || '{\"name\": \"forged\"}'"
                             " where organization_id = $1 and id = $2", org, row["id"])
    assert await first_problem() == ("altered", str(row["id"]))
    await admin_conn.execute("update token_audit_log set changes = $3::jsonb where organization_id = $1 and id = $2",
                             org, row["id"], json.dumps(row["changes"]) if isinstance(row["changes"], dict)
                             else row["changes"])
    assert (await verify(client, t))["status"] == "intact"  # restored byte for byte: intact again

    # 2. An edited usage record: a refusal turned into a success.
    usage = await admin_conn.fetchrow("select id, status from token_usage where organization_id = $1"
                                      " order by txid, id limit 1", org)
    await admin_conn.execute("update token_usage set status = 299 where organization_id = $1 and id = $2",
                             org, usage["id"])
    assert await first_problem() == ("altered", str(usage["id"]))
    await admin_conn.execute("update token_usage set status = $3 where organization_id = $1 and id = $2",
                             org, usage["id"], usage["status"])

    # 3. A deleted event.
    victim = await admin_conn.fetchrow("select * from token_audit_log where organization_id = $1"
                                       " and table_name = 'agent' and action = 'UPDATE' order by txid, id limit 1",
                                       org)
    await admin_conn.execute("delete from token_audit_log where organization_id = $1 and id = $2", org, victim["id"])
    assert await first_problem() == ("deleted", str(victim["id"]))
    cols = list(victim.keys())
    await admin_conn.execute(
        f"insert into token_audit_log ({', '.join(cols)}) values ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
        *victim.values())
    assert (await verify(client, t))["status"] == "intact"

    # 4. An event inserted out of band, backdated into a sealed range.
    first = (await trail(admin_conn, t))[0]
    forged = uuid.UUID(int=first["id"].int + 1)
    await admin_conn.execute(
        "insert into token_audit_log (organization_id, id, txid, occurred_at, table_name, action, changes)"
        " values ($1, $2, $3, now() - interval '1 day', 'agent', 'DELETE', '{}')", org, forged, first["txid"])
    assert await first_problem() == ("inserted", str(forged))
    await admin_conn.execute("delete from token_audit_log where organization_id = $1 and id = $2", org, forged)

    # 5. The seals themselves: a rewritten hash, a removed seal.
    await admin_conn.execute("update audit_seal set event_hashes[1] = sha256('x') where organization_id = $1"
                             " and seq = 1", org)
    report = await verify(client, t)
    assert report["status"] == "tampered" and {p["problem"] for p in report["problems"]} >= {"seal_altered"}
    await admin_conn.execute("delete from audit_seal where organization_id = $1 and seq = 1", org)
    report = await verify(client, t)
    assert report["first_problem"]["problem"] == "seal_missing"


async def test_an_insert_after_the_last_seal_is_reported_unsealed_not_verified(client, database, admin_conn):
    """The honest limit: a row added after the newest seal looks like a new event until
    sealed. Verify does not call it verified: it is counted as unsealed."""
    t = await signup(client)
    await activity(client, t, 1)
    await seal(database, t)
    before = await verify(client, t)
    await flush(client)
    await seal(database, t)  # seal the verify request's own usage record
    await admin_conn.execute("insert into token_audit_log (organization_id, table_name, action, changes)"
                             " values ($1, 'agent', 'DELETE', '{}')", uuid.UUID(t.organization_id))
    report = await verify(client, t)
    assert report["status"] == "intact" and report["unsealed_events"] == 1
    assert report["verified_events"] == before["verified_events"] + 1


async def test_purge_leaves_a_sealed_record_and_verify_still_passes(client, database, admin_conn, api_conn,
                                                                    monkeypatch):
    t = await signup(client)
    org = uuid.UUID(t.organization_id)
    await activity(client, t)
    old = len(await trail(admin_conn, t))
    await seal(database, t, block_size=4)

    # Nothing older than the window: nothing purged.
    monkeypatch.setenv("OWNER_DATABASE_URL", database.owner_url)
    await asyncio.to_thread(cli.main, ["audit", "purge", "--older-than", "30d", "--org", str(org)])
    assert len(await trail(admin_conn, t)) == old
    # The API role may not purge, nor delete anything itself.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch("select * from app.audit_purge(now(), $1)", org)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute("delete from token_audit_log where organization_id = $1", org)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute("update token_usage set status = 200 where organization_id = $1", org)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.execute("delete from audit_seal where organization_id = $1", org)

    # The maintenance command (as the owner): every sealed block older than the cutoff.
    (purged,) = await sealing.purge(database.owner_url, before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
                                    organization_id=org)
    assert purged["events"] == old and len(await trail(admin_conn, t)) == 0
    seals = await admin_conn.fetch("select seq, kind, purged_through_seq from audit_seal where organization_id = $1"
                                   " order by seq", org)
    assert seals[-1]["kind"] == "purge" and seals[-1]["purged_through_seq"] == seals[-2]["seq"]
    report = await verify(client, t)
    assert report["status"] == "intact" and report["purged_events"] == old
    assert report["verified_events"] == 0 and report["head_seq"] == seals[-1]["seq"]

    # Life goes on after a purge: new events chain onto the purge record (the command
    # with no --org seals every organization with something to seal).
    await activity(client, t, 1)
    await asyncio.to_thread(cli.main, ["audit", "seal"])
    report = await verify(client, t)
    assert report["status"] == "intact" and report["verified_events"] > 0 and report["unsealed_events"] == 0
    # Something slipped into the purged range afterwards is caught.
    forged = uuid.UUID(int=seals[0]["seq"])
    await admin_conn.execute("insert into token_audit_log (organization_id, id, txid, table_name, action, changes)"
                             " values ($1, $2, '1', 'agent', 'INSERT', '{}')", org, forged)
    assert (await verify(client, t))["first_problem"]["problem"] == "inserted"


async def test_purge_keeps_newer_blocks_and_sealing_resumes_after_them(client, database, admin_conn):
    t = await signup(client)
    org = uuid.UUID(t.organization_id)
    await activity(client, t, 2)
    (older,) = await seal(database, t, block_size=3)
    await asyncio.sleep(0.01)
    cutoff = dt.datetime.now(dt.UTC)
    await activity(client, t, 2)
    (newer,) = await seal(database, t, block_size=3)

    (purged,) = await sealing.purge(database.owner_url, before=cutoff, organization_id=org)
    assert (purged["blocks"], purged["events"]) == (older["blocks"], older["events"])
    remaining = await admin_conn.fetch("select occurred_at from audit_event where organization_id = $1", org)
    assert len(remaining) == newer["events"] and min(r["occurred_at"] for r in remaining) >= cutoff
    assert await sealing.purge(database.owner_url, before=cutoff, organization_id=org) == []  # done already

    await activity(client, t, 1)
    (latest,) = await seal(database, t, block_size=3)
    report = await verify(client, t)
    assert report["status"] == "intact", report
    assert (report["purged_events"], report["verified_events"], report["unsealed_events"]) == (
        older["events"], newer["events"] + latest["events"], 0)
