"""`musketeer audit verify`: ask the API to walk the event log's hash chain."""

from __future__ import annotations

import typer

from client.cli import output as show
from client.cli.session import ApiUrl, AsJson, reports_errors, session


@reports_errors
def audit_verify(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """Check the event log's hash chain; exit 1 at the first altered event."""
    with session(ctx).client(api_url) as client:
        report = client.verify()
    if as_json:
        show.print_json(report)
    elif report.ok:
        show.out().print(f"[green]Hash chain intact[/green]: {report.events} events verified.")
    else:
        where = report.first_bad_position
        show.print_failure(
            f"hash chain broken at position {where} ({report.events} events checked)"
        )
    if not report.ok:
        raise typer.Exit(1)
