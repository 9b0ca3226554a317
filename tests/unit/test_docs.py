"""The README stays the front door (short, one environment table naming every variable
the code reads, a map of the tree) and no link in the documentation points nowhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

# os.environ.get("X" / os.environ["X" / env.get("X" / env["X" (Settings.from_env's mapping)
ENV_READ = re.compile(r"""\b(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""")
NOT_SETTINGS = {"PATH"}  # the process's own, passed on to children
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def variables_read() -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in ("src", "tests", "tests_pgbouncer", "scripts", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in ENV_READ.findall(path.read_text()):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return {k: v for k, v in found.items() if k not in NOT_SETTINGS}


def environment_table() -> set[str]:
    section = README.read_text().split("## Environment", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_variable_the_code_reads_is_in_the_environment_table():
    read = variables_read()
    assert {"DATABASE_URL", "JWT_SECRET", "MIGRATION_LOCK_TIMEOUT_SECONDS", "TEST_DATABASE_URL"} <= set(read)
    missing = {name: where for name, where in read.items() if name not in environment_table()}
    assert not missing, f"read by the code, missing from the README's environment table: {missing}"


def test_the_readme_is_short_and_has_one_of_each_section():
    text = README.read_text()
    # ten minutes of reading, the environment table included (half of it)
    assert len(text.encode()) < 15 * 1024, f"README.md is {len(text.encode())} bytes: move design into docs/"
    headings = re.findall(r"^#+ .*$", text, re.MULTILINE)
    assert len(headings) == len(set(headings)), f"a section twice (a merge leftover?): {headings}"
    assert text.count("| variable |") == 1, "one environment table"


def test_the_readme_map_names_every_package_module_and_top_level_directory():
    text = README.read_text()
    package = ROOT / "src" / "tenant_api"
    names = [p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
             if p.name not in ("__init__.py", "__pycache__", "py.typed")]
    # The checkout's directories (build output and caches are git-ignored: build/, dist/).
    names += [p.name + "/" for p in ROOT.iterdir()
              if p.is_dir() and not p.name.startswith(".") and p.name not in ("build", "dist")]
    assert "policies/" in names and "auth/" in names
    missing = [n for n in names if n not in text]
    assert not missing, f"not in the README's map: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md":
                anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.MULTILINE)}
                if anchor not in anchors:
                    broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
