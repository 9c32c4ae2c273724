"""Versioned SQL migrations and a runner that is safe to re-run.

The runner takes any DB-API style connection (psycopg 3 here), so `schema/`
stays free of a database driver. Each file `NNNN_name.sql` is applied once, in
order, inside one transaction that also records it in `schema_migrations`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant works, as long as every runner uses the same one: it serialises
# concurrent runners (two API processes starting at once) on one database.
_ADVISORY_LOCK_KEY = 0x6D75736B


class Connection(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def transaction(self) -> Any: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations shipped with this code, in version order."""
    found = []
    for entry in resources.files("schema.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def apply(conn: Connection) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for migration in available():
            if migration.version in done:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.name)
    return applied_now
