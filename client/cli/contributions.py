"""`musketeer tasks contributions`: what each participant's data was worth, round by round."""

from __future__ import annotations

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from client import MusketeerClient, PermissionDenied, Task
from client.cli import output as show
from client.cli.session import ApiUrl, AsJson, TaskName, reports_errors, session
from client.contributions import ContributionReport

# Rounds shown as columns; a long task shows its last ones (the totals count every round).
ROUNDS_SHOWN = 8


def contributions_table(report: ContributionReport) -> Group:
    """Participants by total value, highest first, with their value in each of the last rounds."""
    shown = report.items[-ROUNDS_SHOWN:]
    last = report.items[-1]
    caption = (f"{last.method} on {last.metric}, evaluated on {last.data}; "
               f"{len(report.items)} round(s) valued")
    if len(shown) < len(report.items):
        caption += f", the last {len(shown)} shown"
    table = Table(title="contributions", title_justify="left", show_edge=False, header_style="bold")
    table.add_column("participant")
    table.add_column("total", justify="right")
    for item in shown:
        table.add_column(f"round {item.round}", justify="right")
    for who, total in sorted(report.totals.items(), key=lambda pair: -pair[1]):
        values = [f"{item.values[who]:+.4f}" if who in item.values else "-" for item in shown]
        table.add_row(escape(who), f"{total:+.4f}", *values)
    # Under the table, not as its caption: a caption would wrap to the table's width.
    return Group(table, Text(caption, style="dim"))


@reports_errors
def tasks_contributions(ctx: typer.Context, name: TaskName, api_url: ApiUrl = None,
                        as_json: AsJson = False) -> None:
    """Show what each participant's data was worth: values per round and in total.

    Recorded when the definition has "contribution": "leave_one_out" or "shapley".

    Values are in the task's metric (accuracy; R² for regression) on the aggregator's eval data.
    """
    with session(ctx).client(api_url) as client:
        report = client.contributions(name)
    if as_json:
        return show.print_json(report)
    if not report.items:
        return show.out().print(f"No contributions recorded for {name} (the definition needs "
                                "\"contribution\": \"leave_one_out\" or \"shapley\").")
    show.out().print(contributions_table(report))


def contributions_if_any(client: MusketeerClient, task: Task) -> ContributionReport | None:
    """The task's contribution values if it asks for them, some exist and the user may see them."""
    if not task.definition.get("contribution"):
        return None
    try:
        report = client.contributions(task.name)
    except PermissionDenied:  # outsiders see the task, not what its members' data was worth
        return None
    return report if report.items else None
