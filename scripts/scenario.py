"""Drive the whole product through the HTTP API alone, against a running server.

    make run            # in one terminal; copy the printed API token
    .venv/bin/python scripts/scenario.py <token> [base URL]

template -> agent (with profile) -> task -> schedule -> jobs made by the scheduler -> logs
-> conversation with a live stream -> desktop VM with a connected robot (WebSocket) ->
macro execution -> the token's audit events, usage and verification. Exits non-zero at the
first unexpected answer.
"""
import sys, httpx, json, time
base = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8000"
tok = sys.argv[1]
h = {"Authorization": f"Bearer {tok}"}
c = httpx.Client(base_url=base, headers=h, timeout=10)
def ok(r, code=(200, 201, 204)):
    if r.status_code not in (code if isinstance(code, tuple) else (code,)):
        print("FAIL", r.request.method, r.request.url, r.status_code, r.text[:300]); sys.exit(1)
    return r.json() if r.content else None
me = ok(c.get("/v1/me"))
prj = ok(c.get("/v1/projects"))["items"][0]["id"]
tpl = ok(c.post("/v1/agent-templates", json={"slug": f"support-{int(time.time())}", "name": "Support", "category": "support", "tools": ["email"], "default_profile": {"display_name": "Ada", "bio": "helps"}}))
agent = ok(c.post("/v1/agents", json={"project_id": prj, "name": f"ada-{int(time.time())}", "template_id": tpl["id"]}))
print("agent", agent["type"], ok(c.get(f"/v1/agents/{agent['id']}/profile"))["display_name"])
task = ok(c.post("/v1/tasks", json={"project_id": prj, "summary": "answer mail", "agent_id": agent["id"], "steps": [{"title": "read", "done": False}]}))
task = ok(c.patch(f"/v1/tasks/{task['id']}", json={"status": "in_progress"}))
r = c.patch(f"/v1/tasks/{task['id']}", json={"status": "todo"}); print("task back to todo", r.status_code)
sched = ok(c.post("/v1/job-schedules", json={"project_id": prj, "name": f"nightly-{int(time.time())}", "cron": "*/2 * * * * ?", "timezone": "Europe/Paris", "target": {"kind": "command", "ref": "sync"}}))
print("schedule next_run_at", sched["next_run_at"])
time.sleep(4)
jobs = ok(c.get(f"/v1/jobs?schedule_id={sched['id']}"))["items"]
print("jobs from scheduler", len(jobs))
job = jobs[0]
ok(c.patch(f"/v1/jobs/{job['id']}", json={"status": "running"}))
for chunk in ("line 1\n", "line 2\n"):
    ok(c.post(f"/v1/jobs/{job['id']}/logs", json={"data": chunk}))
logs = ok(c.get(f"/v1/jobs/{job['id']}/logs?after=0"))
print("logs", [l["data"] for l in logs["items"]], logs["next_after"])
ok(c.patch(f"/v1/jobs/{job['id']}", json={"status": "succeeded", "exit_code": 0}))
ok(c.patch(f"/v1/job-schedules/{sched['id']}", json={"enabled": False}))
conv = ok(c.post("/v1/conversations", json={"project_id": prj, "kind": "CHANNEL", "name": f"general-{int(time.time())}"}))
with c.stream("GET", f"/v1/conversations/{conv['id']}/stream") as s:
    msg = ok(c.post(f"/v1/conversations/{conv['id']}/messages", json={"body": "hello"}))
    for line in s.iter_lines():
        if line.startswith("data:"):
            print("stream got", json.loads(line[5:])["body"]); break
cfg = ok(c.post("/v1/desktop-configs", json={"project_id": prj, "name": f"ubuntu-{int(time.time())}", "image": "ubuntu:24.04"}))
vm = ok(c.post("/v1/desktop-vms", json={"config_id": cfg["id"], "name": "vm1"}))
ok(c.post(f"/v1/desktop-vms/{vm['id']}/start"))
import websockets.sync.client as wsc
ws_base = base.replace("http", "ws", 1)
with wsc.connect(f"{ws_base}/v1/desktop-connections/ws?vm_id={vm['id']}", additional_headers=h) as ws:
    hello = json.loads(ws.recv()); ws.send(json.dumps({"type": "ping"})); print("ws", hello["type"], json.loads(ws.recv()))
    conns = ok(c.get(f"/v1/desktop-connections?vm_id={vm['id']}"))["items"]; print("connections while connected", [x["status"] for x in conns])
time.sleep(0.5)
print("after disconnect", [x["status"] for x in ok(c.get(f"/v1/desktop-connections?vm_id={vm['id']}"))["items"]])
macro = ok(c.post("/v1/robot-macros", json={"project_id": prj, "name": f"login-{int(time.time())}", "steps": [{"action": "click", "params": {"x": 1}}]}))
ex = ok(c.post(f"/v1/robot-macros/{macro['id']}/executions", json={"vm_id": vm["id"]}))
ex = ok(c.patch(f"/v1/robot-macros/{macro['id']}/executions/{ex['id']}", json={"status": "succeeded", "output": {"ok": True}}))
print("execution", ex["status"], ex.get("duration_ms"))
ev = ok(c.get(f"/v1/audit/events?token_id={me['token']['id']}&limit=200"))
print("audit events for token", len(ev["items"]))
print("usage", ok(c.get("/v1/audit/usage?bucket=day"))["items"][:1])
print("verify", ok(c.get("/v1/audit/verify")))
