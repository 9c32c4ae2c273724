"""What every user command shares: the common options, how it gets a client, how it reports errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer

from client import AuthenticationError, ClientError, MusketeerClient, RetryPolicy
from client.cli import output as show
from client.credentials import ENV_TOKEN
from client.profile import Profile, environment_password

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


# Someone is waiting at the terminal: a brief API restart is waited out, a platform that is
# not running is reported within seconds (the daemons wait five minutes, saying so).
INTERACTIVE_RETRY = RetryPolicy(total_wait=3.0)


def client_from_profile(api_url: str | None) -> MusketeerClient:
    return MusketeerClient.from_profile(api_url=api_url, retry=INTERACTIVE_RETRY)


@dataclass
class Session:
    """What the commands share: how to build a client, and whether it had a token."""

    client_factory: ClientFactory = client_from_profile
    had_token: bool = field(default=False, init=False)
    token_source: str | None = field(default=None, init=False)

    def client(self, api_url: str | None) -> MusketeerClient:
        try:
            client = self.client_factory(api_url)
        except ValueError as exc:  # an unreadable profile file
            raise CliFailure(str(exc)) from exc
        self.had_token = client.token is not None
        self.token_source = client.token_source
        return client


def session(ctx: typer.Context) -> Session:
    found = ctx.find_object(Session)
    return found if found is not None else Session()


def profile() -> Profile:
    try:
        return Profile.load()
    except ValueError as exc:
        raise CliFailure(str(exc)) from exc


def auth_hint(ctx: typer.Context | None) -> str:
    """What to do about a 401, depending on where the refused token (if any) came from."""
    current = session(ctx) if ctx is not None else Session()
    source = current.token_source
    if current.had_token and source == ENV_TOKEN:
        return ("MUSKETEER_TOKEN is set and the API refused it: `unset MUSKETEER_TOKEN` to use "
                "your saved login (or set it to a valid token).")
    if current.had_token:
        who = source.removeprefix("the saved login of ") if source else "USERNAME"
        return (f"Your session has expired or is not valid here: run `musketeer login {who}` again.")
    if source:  # `--as USER` without a login of theirs here
        return f"There is {source}. {LOGIN_HINT}"
    return "You are not logged in to this API. " + LOGIN_HINT


def reports_errors(command: F) -> F:
    """Turn API and local failures into a red message and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AuthenticationError as exc:
            show.print_client_error(exc, auth_hint(kwargs.get("ctx")))
        except ClientError as exc:
            show.print_client_error(exc)
        except CliFailure as exc:
            show.print_failure(str(exc))
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def read_password(from_stdin: bool, confirm: bool) -> str:
    """The password from stdin, MUSKETEER_PASSWORD, or a hidden prompt, in that order."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise typer.BadParameter("stdin gave an empty password", param_hint="--password-stdin")
        return password
    env = environment_password()
    if env:
        return env
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=confirm))
