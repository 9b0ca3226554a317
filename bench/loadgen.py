"""The load generator, always in a process of its own.

wrk (Debian's package) with bench/scenario.lua when it is installed; otherwise this
module's own client (`python -m bench.loadgen`): asyncio on uvloop, one keep-alive
HTTP/1.1 connection per virtual user, the same request files and the same JSON result.
Both are closed-loop: each connection sends its next request when the previous answer
has arrived, at a fixed concurrency for a fixed duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

LUA = Path(__file__).with_name("scenario.lua")


def available() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def describe() -> str:
    if available() == "wrk":
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        return (out.stdout or out.stderr).split("[")[0].strip() or "wrk"
    return "bench.loadgen (asyncio, keep-alive)"


def start(base_url: str, request_file: Path, concurrency: int, seconds: float, nonce: str,
          threads: int = 1) -> subprocess.Popen:
    """Start a load run in its own process; finish() collects its result."""
    if available() == "wrk":
        cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(LUA), base_url, "--", str(request_file), nonce, str(threads)]
    else:
        cmd = [sys.executable, "-m", "bench.loadgen", base_url, str(request_file), "--concurrency", str(concurrency),
               "--seconds", str(seconds), "--nonce", nonce]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line[len("BENCH_JSON "):])
            seconds = raw["duration_us"] / 1e6
            return {
                "requests": raw["requests"],
                "seconds": seconds,
                "rps": raw["requests"] / seconds if seconds else 0.0,
                "p50_ms": raw["p50_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000,
                "errors": raw["socket_errors"] + raw["timeouts"] + raw["non_2xx"],
                "statuses": raw["statuses"],
                "sample": raw["sample"],
            }
    raise RuntimeError(f"load generator failed: {err.strip() or out.strip()}")


# --- the asyncio fallback client -------------------------------------------------------

def _requests(path: Path) -> list[tuple[bytes, bytes | None]]:
    out = []
    for line in path.read_text().splitlines():
        method, target, token, *rest = line.split("\t")
        body = rest[0] if rest and rest[0] else ""
        out.append((f"{method} {target} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n".encode(),
                    body.encode() if body else None))
    return out


async def _user(host: str, port: int, reqs: list, offset: int, stride: int, unique: str, deadline: float,
                lat: list[int], statuses: dict[str, int], sample: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    pos, counter = offset, 0
    try:
        while time.perf_counter() < deadline:
            head, body = reqs[pos % len(reqs)]
            pos += stride
            if body is not None:
                if b"%N%" in body:
                    counter += 1
                    body = body.replace(b"%N%", f"{unique}{counter}".encode())
                msg = head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            else:
                msg = head + b"\r\n"
            t0 = time.perf_counter_ns()
            writer.write(msg)
            status_line = await reader.readline()
            length = 0
            while (h := await reader.readline()) not in (b"\r\n", b""):
                if h[:15].lower() == b"content-length:":
                    length = int(h[15:])
            payload = await reader.readexactly(length) if length else b""
            lat.append(time.perf_counter_ns() - t0)
            status = status_line.split(b" ", 2)[1].decode()
            if status[0] != "2":
                statuses[status] = statuses.get(status, 0) + 1
                if not sample:
                    sample.append(f"{status} {payload[:300].decode(errors='replace')}")
    finally:
        writer.close()


async def _main(base_url: str, request_file: Path, concurrency: int, seconds: float, nonce: str) -> dict:
    parts = urlsplit(base_url)
    reqs = _requests(request_file)
    lat: list[int] = []
    statuses: dict[str, int] = {}
    sample: list[str] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(
        _user(parts.hostname or "127.0.0.1", parts.port or 80, reqs, i, concurrency, f"{nonce}-{i}-", deadline, lat,
              statuses, sample)
        for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    lat.sort()
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] // 1000) if lat else (lambda q: 0)
    return {"requests": len(lat), "duration_us": int(elapsed * 1e6), "p50_us": pick(0.50), "p99_us": pick(0.99),
            "mean_us": (sum(lat) / len(lat) / 1000) if lat else 0, "socket_errors": 0, "timeouts": 0,
            "non_2xx": sum(statuses.values()), "statuses": statuses, "sample": sample[0] if sample else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base_url")
    parser.add_argument("request_file", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--nonce", default="n")
    args = parser.parse_args()
    coro = _main(args.base_url, args.request_file, args.concurrency, args.seconds, args.nonce)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
