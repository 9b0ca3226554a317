"""A webhook receiver for trying webhooks locally (standard library only).

    WEBHOOK_SECRET=whsec_... python scripts/webhook_receiver.py --port 9000

then register it (with `make run`, local receivers are allowed):

    curl -X POST localhost:8000/v1/webhooks -H "Authorization: Bearer $TOKEN" \
         -H 'Content-Type: application/json' \
         -d '{"url": "http://127.0.0.1:9000/hooks", "event_types": ["job.*"]}'

and restart it with the secret from that answer. It prints every event, says whether its
signature verifies, refuses stale timestamps (replays) and ignores an event id it has
seen already (retries, redeliveries), answering 200 so they are not sent again.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 300


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        return False
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                valid = verify(secret, headers, body) if secret else None
            except (KeyError, ValueError):
                valid = False
            if valid is False:
                print("REFUSED: bad or stale signature", flush=True)
                self.send_response(400)
                self.end_headers()
                return
            event_id = headers.get("webhook-id", "")
            if event_id in seen:
                print(f"duplicate {event_id} (a retry or a redelivery): ignored", flush=True)
            else:
                seen.add(event_id)
                event = json.loads(body)
                mark = "verified" if valid else "UNVERIFIED (no WEBHOOK_SECRET)"
                print(f"{event['type']} {event['object_id']} [{mark}]\n  {json.dumps(event['data'])}", flush=True)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    print(f"listening on http://127.0.0.1:{args.port}/", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
