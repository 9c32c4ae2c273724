"""How the `musketeer` commands show things: tables, panels, JSON and errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from client import ClientError
from client.daemonlog import LOG_FORMATS, DaemonLog
from client.models import Round, Task, TaskEvent, TaskState

SUMMARY_WIDTH = 200
HASH_SHOWN = 12
MAX_DIFFERENCES_SHOWN = 20

STATUS_STYLE = {
    "CREATED": "cyan",
    "STARTED": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "DELETED": "dim",
}


def out() -> Console:
    """A console on the current stdout (created per use, so test runners capture it)."""
    return unwrapped_off_terminal(Console(highlight=False))


def err() -> Console:
    """A console on the current stderr."""
    return unwrapped_off_terminal(Console(stderr=True, highlight=False))


def unwrapped_off_terminal(console: Console) -> Console:
    """Wrap lines only on a terminal: a log or a pipe gets each message whole, on one line."""
    console.soft_wrap = not console.is_terminal
    return console


Item = TypeVar("Item", bound=BaseModel)


def print_items(items: Sequence[Item], as_json: bool, empty: str,
                table: Callable[[Sequence[Item]], Table]) -> None:
    """A list command's answer: `{"items": [...]}` with --json, else the table, or `empty` when
    there is nothing to show."""
    if as_json:
        print_json({"items": [item.model_dump(mode="json") for item in items]})
    elif not items:
        out().print(empty)
    else:
        out().print(table(items))


def print_json(data: Any) -> None:
    """Print data as indented JSON on stdout, plain (no colour codes), for scripts."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    print(json.dumps(data, indent=2, default=str))


def print_failure(message: str, details: Any = None, hint: str | None = None) -> None:
    """Print an error in red on stderr, with its details and what to do about it."""
    console = err()
    console.print(f"[bold red]error:[/bold red] [red]{escape(message)}[/red]")
    for line in detail_lines(details):
        # The API's message often is its first field error; do not say it twice.
        if line.removeprefix("- ") not in message:
            console.print(f"  [red]{escape(line)}[/red]")
    if hint:
        console.print(escape(hint))


def print_client_error(exc: ClientError, hint: str | None = None) -> None:
    """Print what the server (or the connection) reported."""
    label = f"{exc.code}: " if exc.code not in ("error", "unreachable") else ""
    print_failure(f"{label}{exc.message}", exc.details, hint)


def detail_lines(details: Any) -> list[str]:
    """The error details as short lines (field errors one per line)."""
    if details in (None, "", [], {}):
        return []
    if isinstance(details, list):
        return [_detail_item(item) for item in details]
    if isinstance(details, dict):
        return [f"{key}: {_compact(value)}" for key, value in details.items()]
    return [str(details)]


def _detail_item(item: Any) -> str:
    # FastAPI/pydantic validation errors: {"loc": [...], "msg": "..."}.
    if isinstance(item, dict) and "msg" in item:
        loc = ".".join(str(part) for part in item.get("loc", []) if part != "body")
        return f"- {loc}: {item['msg']}" if loc else f"- {item['msg']}"
    return f"- {_compact(item)}"


def when(moment: datetime | None) -> str:
    """A timestamp in local time, to the second."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def status_text(status: str) -> str:
    """The status, coloured."""
    return f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def tasks_table(tasks: Iterable[Task]) -> Table:
    """The task list: one row per task."""
    table = Table(show_edge=False, header_style="bold")
    # Names are what people copy into the next command: never wrapped.
    table.add_column("name", no_wrap=True)
    for column in ("status", "creator", "participants", "rounds"):
        table.add_column(column, overflow="fold")
    # A date folded over three lines at 80 columns reads as three dates.
    table.add_column("created", no_wrap=True)
    for task in tasks:
        table.add_row(
            escape(task.name),
            status_text(task.status),
            escape(task.creator),
            _members(task),
            _text(task.rounds),
            when(task.created_at),
        )
    return table


def plural(count: int, noun: str) -> str:
    """`1 participant`, `2 participants`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _members(task: Task) -> str:
    quorum = task.effective_quorum
    return (
        f"{task.participant_count}/{quorum}" if quorum is not None else str(task.participant_count)
    )


def task_panel(task: Task) -> Panel:
    """One task in detail: summary, definition, participants."""
    parts: list[Any] = [_task_summary(task), _definition_table(task.definition)]
    if task.participants:
        parts.append(_participants_table(task))
    title = f"task [bold]{escape(task.name)}[/bold]"
    if isinstance(task, TaskState):
        title += f" as of version {task.as_of_version}"
    return Panel(Group(*parts), title=title, title_align="left", expand=False)


def _task_summary(task: Task) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows = [
        ("id", escape(task.task_id)),
        ("status", status_text(task.status)),
        ("creator", escape(task.creator)),
        ("description", escape(task.description or "-")),
        ("topology / pom", f"{escape(task.topology)} / {task.pom}"),
        ("participants", _members(task) + _cap(task)),
        ("rounds", f"{task.rounds_completed} of {_text(task.rounds)} completed"),
        *_outcome(task),
        ("topics", escape(f"{task.topics.broadcast or '-'}  {task.topics.updates or '-'}")),
        ("version", str(task.version)),
        ("created", when(task.created_at)),
        ("updated", when(task.updated_at)),
    ]
    if task.epsilon is not None:
        delta = task.definition.get("delta", 1e-5)
        rows.append(("privacy spent", f"epsilon {task.epsilon:.3f} (delta {delta:g})"))
    if task.completion_reason:
        rows.append(("ended early", escape(task.completion_reason)))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _outcome(task: Task) -> list[tuple[str, str]]:
    """The final model's digest and the failure reason, when the task has them."""
    rows = []
    if task.model_sha256:
        rows.append(("final model", f"sha256 {task.model_sha256}"))
    if task.failure_reason:
        rows.append(("failure", f"[red]{escape(task.failure_reason)}[/red]"))
    return rows


def _cap(task: Task) -> str:
    return f" (max {task.max_participants})" if task.max_participants else ""


def _definition_table(definition: dict[str, Any]) -> Table:
    table = Table(title="definition", title_justify="left", show_edge=False, header_style="bold")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in sorted(definition.items()):
        table.add_row(escape(key), escape(_compact(value)))
    return table


def _participants_table(task: Task) -> Table:
    table = Table(title="participants", title_justify="left", show_edge=False, header_style="bold")
    for column in ("username", "organization", "joined", "last contact"):
        table.add_column(column)
    for member in task.participants:
        table.add_row(escape(member.username), escape(member.organization or "-"),
                      when(member.joined_at), when(member.last_contact_at))
    return table


def events_table(events: Iterable[TaskEvent]) -> Table:
    """A task's history as a timeline, oldest first, one line per event."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("pos", "time", "type", "actor", "hash"):
        table.add_column(column, no_wrap=True)
    table.add_column("data")
    for event in events:
        # A no-wrap Text: a long summary is cut at the terminal's edge, never wrapped.
        data = Text(summarize(event.data), no_wrap=True, overflow="ellipsis")
        actor = event.actor or "-"
        # The chain's first hex digits, enough to compare with `audit verify` (--json has all).
        digest = (event.hash or "-")[:HASH_SHOWN]
        row = (str(event.position), when(event.recorded_at), escape(event.type), escape(actor), digest)
        table.add_row(*row, data)
    return table


def rounds_table(rounds: Iterable[Round]) -> Table:
    """Completed rounds: participants, local and evaluation metrics, time and model digest."""
    # Two-line headers keep every column readable in an 80-column terminal; only the
    # participants' names wrap.
    table = Table(show_edge=False, header_style="bold")
    table.add_column("round", justify="right", no_wrap=True)
    table.add_column("participants", min_width=8)
    for column in ("samples", "local\nloss", "local\nacc.", "eval\nloss", "eval\nacc.", "s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("model\nsha256", no_wrap=True)
    for entry in rounds:
        table.add_row(
            str(entry.round), escape(", ".join(entry.participants)), str(sum(entry.samples.values())),
            _metric(entry.metrics, "loss"), _metric(entry.metrics, "accuracy"),
            _metric(entry.eval_metrics, "loss"), _metric(entry.eval_metrics, "accuracy"),
            "-" if entry.duration_s is None else f"{entry.duration_s:.1f}", entry.model_sha256[:HASH_SHOWN])
    return table


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def summarize(data: dict[str, Any], width: int = SUMMARY_WIDTH) -> str:
    """An event's data on one line, `key=value, ...`, cut at `width` characters."""
    line = ", ".join(f"{key}={_compact(value)}" for key, value in data.items())
    return line if len(line) <= width else line[: width - 1] + "…"


def replay_tables(tables: dict[str, Any]) -> list[Table]:
    """One table per projection: rows before and after the rebuild, and what differs."""
    return [_replay_table(name, diff) for name, diff in sorted(tables.items())]


def _replay_table(name: str, diff: Any) -> Table:
    differences: list[str] = list(getattr(diff, "differences", []))
    mark = (
        "[green]identical[/green]"
        if not differences
        else f"[red]{len(differences)} differences[/red]"
    )
    table = Table(title=f"{escape(name)}: {mark}", title_justify="left", show_edge=False)
    table.add_column("rows before", justify="right")
    table.add_column("rows after", justify="right")
    table.add_column("differences", overflow="fold")
    shown = differences[:MAX_DIFFERENCES_SHOWN]
    more = len(differences) - len(shown)
    lines = [escape(d) for d in shown] + ([f"… and {more} more"] if more > 0 else [])
    table.add_row(str(diff.rows_before), str(diff.rows_after), "\n".join(lines) or "-")
    return table


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def daemon_log(daemon: str, log_format: str) -> DaemonLog:
    """The daemon's progress reporter for `--log-format` (a usage error names a bad value)."""
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"{log_format!r} is not one of {', '.join(LOG_FORMATS)}",
                                 param_hint="--log-format")
    return DaemonLog(daemon, "json" if log_format == "json" else "text", out().print)
