"""Named SQL blocks, and the two dialects defining the same queries and migrations."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from errand.storage.sqlfile import load_migrations, load_queries, parse_queries

DIALECTS = ("errand.storage.postgres", "errand.storage.sqlite")

SAMPLE = textwrap.dedent("""\
    -- A header comment, before any name.
    SELECT 'outside any block';

    -- name: first
    SELECT 1;

    -- name: two_statements
    -- a comment line inside the block
    UPDATE t SET a = 1
    WHERE b = 2;
        -- an indented comment
    DELETE FROM t;

    --name:no_spaces
    SELECT 3

    -- name:   padded_name
    SELECT 'a;b' AS x;
    """)


def test_parse_queries_names_and_statements() -> None:
    queries = parse_queries(SAMPLE)
    assert queries == {
        "first": ["SELECT 1"],
        "two_statements": ["UPDATE t SET a = 1\nWHERE b = 2", "DELETE FROM t"],
        "no_spaces": ["SELECT 3"],
        "padded_name": ["SELECT 'a;b' AS x"],
    }
    assert list(queries) == ["first", "two_statements", "no_spaces", "padded_name"]


def test_parse_queries_refuses_a_duplicate_name() -> None:
    text = "-- name: claim\nSELECT 1;\n-- name: other\nSELECT 2;\n-- name: claim\nSELECT 3;\n"
    with pytest.raises(ValueError, match="query 'claim' is defined twice"):
        parse_queries(text)


def test_parse_queries_of_nothing() -> None:
    assert parse_queries("") == {}
    assert parse_queries("-- only a comment\nSELECT 1;\n") == {}


# PostgreSQL-only ways to enqueue: one job by VALUES, a batch by COPY (SQLite has no COPY).
POSTGRES_ONLY = {"enqueue_job", "reserve_jobs", "copy_jobs", "notify_ready"}


def test_both_dialects_define_the_same_queries() -> None:
    postgres, sqlite = (load_queries(package) for package in DIALECTS)
    only_postgres = sorted(set(postgres) - set(sqlite) - POSTGRES_ONLY)
    only_sqlite = sorted(set(sqlite) - set(postgres))
    assert (only_postgres, only_sqlite) == ([], [])
    assert postgres, "no queries loaded"


@pytest.mark.parametrize("package", DIALECTS)
def test_every_query_has_a_statement(package: str) -> None:
    empty = [name for name, statements in load_queries(package).items() if not statements]
    assert empty == []


def test_each_dialect_numbers_its_migrations_from_one() -> None:
    postgres, sqlite = (load_migrations(package) for package in DIALECTS)
    assert [v for v, _ in postgres] == list(range(1, len(postgres) + 1))
    assert [v for v, _ in sqlite] == list(range(1, len(sqlite) + 1))
    # Versions count per dialect: PostgreSQL has a migration of its own (the claim gate).
    assert len(postgres) >= len(sqlite) >= 2
    assert all(sql.strip() for _, sql in postgres + sqlite)


def test_load_migrations_refuses_a_gap_in_the_numbering(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    package = f"fake_dialect_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / package / "migrations"
    folder.mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (folder / "0001_initial.sql").write_text("CREATE TABLE a (x int);")
    (folder / "0003_later.sql").write_text("CREATE TABLE c (x int);")
    (folder / "notes.txt").write_text("not a migration")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"not numbered 1\.\.n: \[1, 3\]"):
        load_migrations(package)
    (folder / "0002_middle.sql").write_text("CREATE TABLE b (x int);")
    assert [v for v, _ in load_migrations(package)] == [1, 2, 3]
