"""Load a dialect's `queries.sql`: named blocks (`-- name: claim_jobs`) of one or more statements.

Keeping every statement of a dialect in one file makes the SQL reviewable in one place;
`load_queries` is called once per backend class, not per query.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def parse_queries(text: str) -> dict[str, list[str]]:
    """Split a queries file into {name: [statement, ...]}; statements end with `;`."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line.strip())
        if match:
            name = match.group(1)
            if name in blocks:
                raise ValueError(f"query {name!r} is defined twice")
            current = blocks[name] = []
            current.append("")
            continue
        if current is None or line.strip().startswith("--"):
            continue
        current[-1] += line + "\n"
        if line.rstrip().endswith(";"):
            current.append("")
    return {name: [s.strip().rstrip(";") for s in stmts if s.strip()]
            for name, stmts in blocks.items()}


def load_queries(package: str) -> dict[str, list[str]]:
    return parse_queries(resources.files(package).joinpath("queries.sql").read_text("utf-8"))


def load_migrations(package: str) -> list[tuple[int, str]]:
    """The numbered migrations of a dialect, in order: [(1, sql), (2, sql), ...]."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_\w+\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text("utf-8")))
    found.sort()
    versions = [version for version, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations of {package} are not numbered 1..n: {versions}")
    return found
