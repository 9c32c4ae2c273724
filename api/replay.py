"""Drop and rebuild the projections from the log, and compare row by row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from api.projections import PROJECTION_TABLES, rebuild

# Primary keys give every snapshot a stable order to compare.
_ORDER = {"users": "username", "tasks": "task_id", "memberships": "task_id, username",
          "rounds": "task_id, round", "member_keys": "fingerprint",
          "contributions": "task_id, round"}


@dataclass(frozen=True)
class TableDiff:
    """How one projection table changed under a rebuild."""

    rows_before: int
    rows_after: int
    differences: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of a rebuild: identical rows in every table, or what differed."""

    events: int
    tables: dict[str, TableDiff]

    @property
    def ok(self) -> bool:
        return all(not diff.differences for diff in self.tables.values())


def _snapshot(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[Any, ...]]:
    # A tuple cursor whatever the connection's row factory (the store's connections give dicts).
    cur = conn.cursor(row_factory=tuple_row).execute(f"SELECT * FROM {table} ORDER BY {_ORDER[table]}")
    keys = [c.strip() for c in _ORDER[table].split(",")]
    names = [col.name for col in cur.description or []]
    rows: dict[str, tuple[Any, ...]] = {}
    for row in cur.fetchall():
        record = dict(zip(names, row, strict=True))
        rows["/".join(str(record[k]) for k in keys)] = tuple(sorted(record.items()))
    return rows


def _compare(before: dict[str, Any], after: dict[str, Any], limit: int = 20) -> list[str]:
    differences: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            differences.append(f"{key}: present before, missing after rebuild")
        elif key not in before:
            differences.append(f"{key}: missing before, present after rebuild")
        elif before[key] != after[key]:
            changed = [k for (k, v), (_, w) in zip(before[key], after[key]) if v != w]
            differences.append(f"{key}: columns differ: {', '.join(changed)}")
        if len(differences) >= limit:
            differences.append("… (more differences not shown)")
            break
    return differences


def replay_in(conn: psycopg.Connection[Any]) -> ReplayReport:
    """Rebuild inside the caller's transaction, comparing each table to its old rows."""
    # The append lock keeps writers out, so the before/after snapshots see one log.
    conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
    before = {table: _snapshot(conn, table) for table in PROJECTION_TABLES}
    events = rebuild(conn)
    after = {table: _snapshot(conn, table) for table in PROJECTION_TABLES}
    tables = {
        table: TableDiff(len(before[table]), len(after[table]),
                         _compare(before[table], after[table]))
        for table in PROJECTION_TABLES
    }
    return ReplayReport(events=events, tables=tables)


def replay(database_url: str) -> ReplayReport:
    """Drop and rebuild every projection in one transaction; the log wins if they differ."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        return replay_in(conn)
