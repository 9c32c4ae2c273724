"""`musketeer audit replay`: the operator rebuilds the projections from the log and compares.

It talks to the database directly (not the API), so it lives with the platform, not the client.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import typer

from api.errors import MusketeerError
from api.replay import ReplayReport, replay
from client.cli import output as show
from client.cli.session import AsJson, CliFailure, profile, reports_errors


def _database_url(option: str | None) -> str:
    url = option or profile().database_url
    if not url:
        raise typer.BadParameter(
            "no database: pass --database-url or set DATABASE_URL", param_hint="--database-url"
        )
    return url


def _run_replay(database_url: str) -> ReplayReport:
    try:
        return replay(database_url)
    except (MusketeerError, psycopg.Error, OSError) as exc:
        raise CliFailure(f"replay failed: {exc}") from exc


def _replay_json(report: ReplayReport) -> dict[str, Any]:
    tables = {
        name: {
            "rows_before": d.rows_before,
            "rows_after": d.rows_after,
            "differences": list(d.differences),
        }
        for name, d in report.tables.items()
    }
    return {"ok": report.ok, "tables": tables}


@reports_errors
def audit_replay(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL URL (default: DATABASE_URL, else the profile's).", show_default=False),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Rebuild every projection from the event log and compare (operator; talks to the database)."""
    report = _run_replay(_database_url(database_url))
    if as_json:
        show.print_json(_replay_json(report))
    else:
        for table in show.replay_tables(report.tables):
            show.out().print(table)
        verdict = "[green]replay matches[/green]" if report.ok else "[red]replay differs[/red]"
        show.out().print(verdict)
    if not report.ok:
        raise typer.Exit(1)
