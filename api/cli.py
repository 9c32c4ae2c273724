"""The user-facing `musketeer` commands that talk to the API: accounts, tasks, audit.

`infra/cli.py` owns the console script and calls `register(app)` to add them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from api import cli_output as show
from api.client import AuthenticationError, ClientError, MusketeerClient
from api.credentials import Credentials, delete_credentials, save_credentials
from api.profile import Profile

ClientFactory = Callable[[str | None], MusketeerClient]
F = TypeVar("F", bound=Callable[..., Any])

LOGIN_HINT = "Run `musketeer login USERNAME` first."


class CliFailure(Exception):
    """A problem on this side (bad profile, missing module) to report without a traceback."""


# --- shared options -------------------------------------------------------------

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        envvar="MUSKETEER_API_URL",
        help="API base URL (default: the profile's, from `musketeer platform up`).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]
TaskName = Annotated[str, typer.Argument(help="The task's name.", show_default=False)]
PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from stdin's first line (else MUSKETEER_PASSWORD, else a prompt).",
    ),
]


# --- the session: how commands get a client ---------------------------------------


def _client_from_profile(api_url: str | None) -> MusketeerClient:
    return MusketeerClient.from_profile(api_url=api_url)


@dataclass
class _Session:
    """What the commands share: how to build a client, and whether it had a token."""

    client_factory: ClientFactory = _client_from_profile
    had_token: bool = field(default=False, init=False)

    def client(self, api_url: str | None) -> MusketeerClient:
        try:
            client = self.client_factory(api_url)
        except ValueError as exc:  # an unreadable profile file
            raise CliFailure(str(exc)) from exc
        self.had_token = client.token is not None
        return client


def _session(ctx: typer.Context) -> _Session:
    found = ctx.find_object(_Session)
    return found if found is not None else _Session()


def _profile() -> Profile:
    try:
        return Profile.load()
    except ValueError as exc:
        raise CliFailure(str(exc)) from exc


def _auth_hint(ctx: typer.Context | None) -> str:
    if ctx is not None and _session(ctx).had_token:
        return (
            "Your session has expired or is not valid here: run `musketeer login USERNAME` again."
        )
    return "You are not logged in to this API. " + LOGIN_HINT


def _reports_errors(command: F) -> F:
    """Turn API and local failures into a red message and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AuthenticationError as exc:
            show.print_client_error(exc, _auth_hint(kwargs.get("ctx")))
        except ClientError as exc:
            show.print_client_error(exc)
        except CliFailure as exc:
            show.print_failure(str(exc))
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def _read_password(from_stdin: bool, confirm: bool) -> str:
    """The password from stdin, MUSKETEER_PASSWORD, or a hidden prompt, in that order."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise typer.BadParameter("stdin gave an empty password", param_hint="--password-stdin")
        return password
    env = os.environ.get("MUSKETEER_PASSWORD")
    if env:
        return env
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))


# --- accounts ----------------------------------------------------------------------


@_reports_errors
def register_user(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="The new user's name.", show_default=False)],
    organization: Annotated[
        str,
        typer.Option("--organization", "-o", help="The user's organisation.", show_default=False),
    ],
    password_stdin: PasswordStdin = False,
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """Create a user account on the platform."""
    password = _read_password(password_stdin, confirm=True)
    with _session(ctx).client(api_url) as client:
        user = client.register(username, password, organization)
    if as_json:
        return show.print_json(user)
    show.out().print(f"Registered [bold]{user.username}[/bold] ({user.organization}).")
    show.out().print(f"Next: musketeer login {user.username}")


@_reports_errors
def login(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Your username.", show_default=False)],
    password_stdin: PasswordStdin = False,
    api_url: ApiUrl = None,
) -> None:
    """Log in and save a token (file mode 0600) for the next commands."""
    password = _read_password(password_stdin, confirm=False)
    with _session(ctx).client(api_url) as client:
        try:
            token = client.login(username, password)
        except AuthenticationError as exc:
            # Here a 401 means a wrong pair, not a missing login: no login hint.
            raise CliFailure(exc.message) from exc
        saved = Credentials.issued(client.api_url, username, token.access_token, token.expires_in)
    path = _profile().credentials_path()
    try:
        save_credentials(saved, path)
    except OSError as exc:
        raise CliFailure(f"logged in, but cannot save the token to {path}: {exc}") from exc
    until = f", valid until {show.when(saved.expires_at)}" if saved.expires_at else ""
    show.out().print(f"Logged in as [bold]{username}[/bold] at {saved.api_url}{until}.")
    show.out().print(f"Token saved to {path}", style="dim")


@_reports_errors
def logout(ctx: typer.Context, api_url: ApiUrl = None) -> None:
    """Forget the saved token."""
    path = _profile().credentials_path()
    if delete_credentials(path):
        show.out().print(f"Logged out (removed {path}).")
    else:
        show.out().print("Not logged in; nothing to do.")


@_reports_errors
def whoami(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """Show the user the saved token belongs to."""
    with _session(ctx).client(api_url) as client:
        user = client.me()
        url = client.api_url
    if as_json:
        return show.print_json(user)
    show.out().print(f"[bold]{user.username}[/bold] ({user.organization}) at {url}")


# --- tasks -----------------------------------------------------------------------


def _parse_time(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date/time", param_hint="--created-after"
        ) from None


@_reports_errors
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
    with _session(ctx).client(api_url) as client:
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


@_reports_errors
def tasks_show(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Show one task: status, definition, participants, topics."""
    with _session(ctx).client(api_url) as client:
        task = client.get_task(name)
    if as_json:
        return show.print_json(task)
    show.out().print(show.task_panel(task))


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
    definition.update({key: value for key, value in flags.items() if value is not None})
    definition.update(_parse_set(item) for item in settings)
    if not definition:
        raise typer.BadParameter("give --definition FILE.json, or at least --quorum and --rounds")
    return definition


@_reports_errors
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
    model: Annotated[str | None, typer.Option(help="Model name from the registry.")] = None,
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
    flags = dict(
        quorum=quorum,
        rounds=rounds,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        training_size=training_size,
        test_size=test_size,
        model=model,
        max_participants=max_participants,
    )
    definition = build_definition(definition_file, flags, settings or [])
    with _session(ctx).client(api_url) as client:
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


@_reports_errors
def tasks_join(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Join a task as a participant."""
    with _session(ctx).client(api_url) as client:
        task = client.join(name)
    if as_json:
        return show.print_json(task)
    quorum = task.effective_quorum
    of = f" of a quorum of {quorum}" if quorum is not None else ""
    show.out().print(f"Joined [bold]{task.name}[/bold]: {task.participant_count} participants{of}.")


@_reports_errors
def tasks_leave(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Leave a task."""
    with _session(ctx).client(api_url) as client:
        task = client.leave(name)
    if as_json:
        return show.print_json(task)
    show.out().print(
        f"Left [bold]{task.name}[/bold]: {task.participant_count} participants remain."
    )


@_reports_errors
def tasks_delete(
    ctx: typer.Context,
    name: TaskName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    api_url: ApiUrl = None,
    as_json: AsJson = False,
) -> None:
    """Delete a task (creator only); its history stays in the log."""
    if not yes:
        typer.confirm(f"Delete task {name!r}?", abort=True)
    with _session(ctx).client(api_url) as client:
        task = client.delete_task(name)
    if as_json:
        return show.print_json(task)
    show.out().print(f"Deleted [bold]{task.name}[/bold] (status {task.status}).")


@_reports_errors
def tasks_history(
    ctx: typer.Context, name: TaskName, api_url: ApiUrl = None, as_json: AsJson = False
) -> None:
    """Show everything that happened to a task, oldest first."""
    with _session(ctx).client(api_url) as client:
        events = client.task_events(name)
    if as_json:
        return show.print_json({"items": [e.model_dump(mode="json") for e in events]})
    if not events:
        return show.out().print("No events.")
    show.out().print(show.events_table(events))


@_reports_errors
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
    with _session(ctx).client(api_url) as client:
        state = client.task_state(name, version)
    if as_json:
        return show.print_json(state)
    show.out().print(show.task_panel(state))


# --- audit -----------------------------------------------------------------------


@_reports_errors
def audit_verify(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """Check the event log's hash chain; exit 1 at the first altered event."""
    with _session(ctx).client(api_url) as client:
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


def _database_url(option: str | None) -> str:
    url = option or _profile().database_url
    if not url:
        raise typer.BadParameter(
            "no database: pass --database-url or set DATABASE_URL", param_hint="--database-url"
        )
    return url


def _run_replay(database_url: str) -> Any:
    try:
        from api.replay import (
            replay,  # lazy: operator-only, and it pulls in the database layer
        )
    except ImportError as exc:
        raise CliFailure(f"replay is not available in this installation: {exc}") from exc
    import psycopg

    from api.errors import MusketeerError

    try:
        return replay(database_url)
    except (MusketeerError, psycopg.Error, OSError) as exc:
        raise CliFailure(f"replay failed: {exc}") from exc


def _replay_json(report: Any) -> dict[str, Any]:
    tables = {
        name: {
            "rows_before": d.rows_before,
            "rows_after": d.rows_after,
            "differences": list(d.differences),
        }
        for name, d in report.tables.items()
    }
    return {"ok": report.ok, "tables": tables}


@_reports_errors
def audit_replay(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="DATABASE_URL",
            help="PostgreSQL URL (default: the profile's).",
            show_default=False,
        ),
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


# --- registration ------------------------------------------------------------------


def register(app: typer.Typer, *, client_factory: ClientFactory | None = None) -> None:
    """Add the account, `tasks` and `audit` commands to `app`.

    `client_factory(api_url)` builds the client; tests pass one with a mock transport.
    """
    # click hands `obj` to each command's context; `_session()` finds it there.
    settings = {"obj": _Session(client_factory or _client_from_profile)}
    app.command("register", context_settings=settings)(register_user)
    app.command("login", context_settings=settings)(login)
    app.command("logout", context_settings=settings)(logout)
    app.command("whoami", context_settings=settings)(whoami)

    tasks = typer.Typer(
        help="Browse, create, join and inspect federated tasks.", no_args_is_help=True
    )
    for name, command in TASK_COMMANDS.items():
        tasks.command(name)(command)
    app.add_typer(tasks, name="tasks", context_settings=settings)

    audit = typer.Typer(help="Check that the event log was not altered.", no_args_is_help=True)
    audit.command("verify")(audit_verify)
    audit.command("replay")(audit_replay)
    app.add_typer(audit, name="audit", context_settings=settings)


TASK_COMMANDS: dict[str, Callable[..., Any]] = {
    "list": tasks_list,
    "show": tasks_show,
    "create": tasks_create,
    "join": tasks_join,
    "leave": tasks_leave,
    "delete": tasks_delete,
    "history": tasks_history,
    "state": tasks_state,
}
