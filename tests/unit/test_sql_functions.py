"""policies/ owns every SQL function: one a migration creates is also defined in a
policies file, which every upgrade re-applies (the migration keeps its copy for its own
history). A function defined only in a revision could never be changed without a new
revision, and a reader would not find it where the policies that use it live."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = re.compile(r"create\s+(?:or\s+replace\s+)?function\s+([a-z_]+\.[a-z_]+)\s*\(", re.IGNORECASE)


def _functions(paths: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        for name in FUNCTION.findall(path.read_text()):
            found.setdefault(name.lower(), []).append(path.name)
    return found


def test_every_function_a_migration_creates_is_defined_in_policies() -> None:
    in_migrations = _functions(sorted((ROOT / "migrations" / "versions").glob("*.py")))
    in_policies = _functions(sorted((ROOT / "policies").glob("*.sql")))
    assert in_migrations, "no function found in migrations/versions: the pattern no longer matches"
    missing = {name: files for name, files in in_migrations.items() if name not in in_policies}
    assert not missing, f"functions defined only in a migration (move them to policies/): {missing}"


def test_shared_lifecycle_functions_live_in_lifecycle_sql() -> None:
    text = (ROOT / "policies" / "lifecycle.sql").read_text()
    for name in ("app.guard_status", "app.guard_run", "app.notify_run_queued"):
        assert f"function {name}()" in text, name
