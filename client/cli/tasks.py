"""Task commands: list, show, create, join, leave, delete, history, state."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from client.cli import output as show
from client.cli.contributions import contributions_if_any, contributions_table
from client.cli.output import plural
from client.cli.session import ApiUrl, AsJson, CliFailure, TaskName, profile, reports_errors, session
from client.keys import KeyRing
from client.keys_api import ensure_registered
from schema.definition import SEED_FIELD_ALIASES, known_model_names

MODEL_HELP = (f"The model: {', '.join(known_model_names())} (user: the aggregator trains its own "
              "Keras file, given as `musketeer aggregate --model FILE`).")


def _parse_time(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date/time", param_hint="--created-after"
        ) from None


@reports_errors
def tasks_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only tasks in this status (CREATED, STARTED, ...).")
    ] = None,
    pom: Annotated[
        int | None, typer.Option(help="Only tasks with this privacy operation mode.")
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="Text to look for in names and descriptions.")
    ] = None,
    creator: Annotated[str | None, typer.Option(help="Only tasks created by this user.")] = None,
    joined: Annotated[
        bool | None,
        typer.Option("--joined/--not-joined", help="Only tasks you joined / did not join."),
    ] = None,
    created_after: Annotated[
        str | None, typer.Option(help="Only tasks created after this ISO date/time.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Page size.")] = None,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page.")] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow cursors and list every match.")
    ] = False,
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """List tasks, newest first."""
    filters: dict[str, Any] = dict(
        status=status.upper() if status else None,
        pom=pom,
        search=search,
        creator=creator,
        joined=joined,
        created_after=_parse_time(created_after),
        limit=limit,
        cursor=cursor,
    )
    with session(ctx).client(api_url) as client:
        if all_pages:
            items, next_cursor = list(client.iter_tasks(**filters)), None
        else:
            page = client.list_tasks(**filters)
            items, next_cursor = page.items, page.next_cursor
    if as_json:
        return show.print_json(
            {"items": [t.model_dump(mode="json") for t in items], "next_cursor": next_cursor}
        )
    if not items:
        return show.out().print("No tasks match.")
    show.out().print(show.tasks_table(items))
    if next_cursor:
        show.out().print(f"More tasks: add --all, or --cursor {next_cursor}", style="dim")


@reports_errors
def tasks_show(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Show one task: status, definition, participants, topics."""
    with session(ctx).client(api_url) as client:
        task = client.get_task(name)
        valued = contributions_if_any(client, task)
    if as_json:
        return show.print_json(task)
    show.out().print(show.task_panel(task))
    if valued is not None:
        show.out().print(contributions_table(valued))


def _definition_file(path: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        loaded = json.loads(text)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--definition") from exc
    if not isinstance(loaded, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object", param_hint="--definition")
    return loaded


def _parse_set(item: str) -> tuple[str, Any]:
    """`key=value`; the value is read as JSON when it parses (5, 0.1, true, [1,2]), else as text."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--set")
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw


def build_definition(
    file: Path | None, flags: dict[str, Any], settings: list[str]
) -> dict[str, Any]:
    """The definition to send: the file, then the flags, then each --set, later ones winning."""
    definition = _definition_file(file) if file else {}
    for key, value in [*((k, v) for k, v in flags.items() if v is not None),
                       *(_parse_set(item) for item in settings)]:
        override(definition, key, value)
    if not definition:
        raise typer.BadParameter("give --definition FILE.json, or at least --quorum and --rounds")
    return definition


def override(definition: dict[str, Any], key: str, value: Any) -> None:
    """Set `key`, dropping its other spelling: `--rounds 7` wins over the seed's `"round": 3`."""
    for seed_name, name in SEED_FIELD_ALIASES.items():
        if key in (seed_name, name):
            definition.pop(name if key == seed_name else seed_name, None)
    definition[key] = value


@reports_errors
def tasks_create(
    ctx: typer.Context,
    name: TaskName,
    definition_file: Annotated[
        Path | None,
        typer.Option(
            "--definition", help="A JSON task definition (the seed's spelling works; - for stdin)."
        ),
    ] = None,
    quorum: Annotated[
        int | None, typer.Option(help="Participants needed before training starts.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local mini-batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Local learning rate.")] = None,
    training_size: Annotated[int | None, typer.Option(help="Local training samples.")] = None,
    test_size: Annotated[int | None, typer.Option(help="Local test samples.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    max_participants: Annotated[int | None, typer.Option(help="Cap on members.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra definition field, key=value (repeatable)."),
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="Free text shown to participants.")
    ] = None,
    topology: Annotated[str, typer.Option(help="Topology of the federation.")] = "STAR",
    pom: Annotated[int, typer.Option(help="Privacy operation mode.")] = 1,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Reuse a key to make a scripted retry safe (default: a fresh one)."),
    ] = None,
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create a federated task from a definition file and/or flags."""
    flags = dict(quorum=quorum, rounds=rounds, epochs=epochs, batch_size=batch_size,
                 learning_rate=learning_rate, training_size=training_size, test_size=test_size,
                 model=model, max_participants=max_participants)
    definition = build_definition(definition_file, flags, settings or [])
    with session(ctx).client(api_url) as client:
        task = client.create_task(
            name,
            definition,
            topology=topology,
            pom=pom,
            description=description,
            idempotency_key=idempotency_key,
        )
    if as_json:
        return show.print_json(task)
    show.out().print(f"Created task [bold]{task.name}[/bold].")
    show.out().print(show.task_panel(task))


@reports_errors
def tasks_join(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Join a task as a participant (making and registering your signing key if you have none)."""
    with session(ctx).client(api_url) as client:
        # The task can only start once every member has a key: make sure ours is there.
        ensure_registered(client, KeyRing(profile().keys_dir(), client.me().username))
        task = client.join(name)
    if as_json:
        return show.print_json(task)
    quorum = task.effective_quorum
    of = f" of a quorum of {quorum}" if quorum is not None else ""
    show.out().print(f"Joined [bold]{task.name}[/bold]: {plural(task.participant_count, 'participant')}{of}.")


@reports_errors
def tasks_leave(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Leave a task."""
    with session(ctx).client(api_url) as client:
        task = client.leave(name)
    if as_json:
        return show.print_json(task)
    remain = "remains" if task.participant_count == 1 else "remain"
    show.out().print(
        f"Left [bold]{task.name}[/bold]: {plural(task.participant_count, 'participant')} {remain}."
    )


@reports_errors
def tasks_delete(
    ctx: typer.Context,
    name: TaskName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """Delete a task (creator only); its history stays in the log."""
    with session(ctx).client(api_url) as client:
        if not yes:
            # Ask only someone who may delete it: a refusal after "Delete? [y/N] y" is rude.
            current, me = client.get_task(name), client.me().username
            if current.creator != me:
                raise CliFailure(f"only the creator of task {name!r} ({current.creator}) may delete it")
            typer.confirm(f"Delete task {name!r} ({current.status}, "
                          f"{plural(current.participant_count, 'participant')})?", abort=True)
        task = client.delete_task(name)
    if as_json:
        return show.print_json(task)
    show.out().print(f"Deleted [bold]{task.name}[/bold] (status {task.status}).")


@reports_errors
def tasks_history(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Show everything that happened to a task, oldest first."""
    with session(ctx).client(api_url) as client:
        events = client.task_events(name)
    show.print_items(events, as_json, "No events.", show.events_table)


@reports_errors
def tasks_state(
    ctx: typer.Context,
    name: TaskName,
    version: Annotated[
        int, typer.Option("--version", min=1, help="Fold the first N events.", show_default=False)
    ],
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show a task as it was after its first N events (time travel)."""
    with session(ctx).client(api_url) as client:
        state = client.task_state(name, version)
    if as_json:
        return show.print_json(state)
    show.out().print(show.task_panel(state))


@reports_errors
def tasks_rounds(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Show each completed round: who contributed, metrics, evaluation and the model's digest."""
    with session(ctx).client(api_url) as client:
        rounds = client.rounds(name)
    show.print_items(rounds, as_json, "No round completed yet.", show.rounds_table)
