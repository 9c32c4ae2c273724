"""Account commands: register, login, logout, whoami."""

from __future__ import annotations

from typing import Annotated

import typer

from client import AuthenticationError
from client.cli import output as show
from client.cli.session import (
    ApiUrl,
    AsJson,
    CliFailure,
    PasswordStdin,
    profile,
    read_password,
    reports_errors,
    session,
)
from client.credentials import Credentials, delete_credentials, read_logins, save_credentials, use_login
from client.profile import chosen_user


@reports_errors
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
    password = read_password(password_stdin, confirm=True)
    with session(ctx).client(api_url) as client:
        user = client.register(username, password, organization)
    if as_json:
        return show.print_json(user)
    show.out().print(f"Registered [bold]{user.username}[/bold] ({user.organization}).")
    show.out().print(f"Next: musketeer login {user.username}")


@reports_errors
def login(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Your username.", show_default=False)],
    password_stdin: PasswordStdin = False,
    api_url: ApiUrl = None,
) -> None:
    """Log in and save a token (file mode 0600) for the next commands."""
    password = read_password(password_stdin, confirm=False)
    with session(ctx).client(api_url) as client:
        try:
            token = client.login(username, password)
        except AuthenticationError as exc:
            # Here a 401 means a wrong pair, not a missing login: no login hint.
            raise CliFailure(exc.message) from exc
        saved = Credentials.issued(client.api_url, username, token.access_token, token.expires_in)
    path = profile().credentials_path()
    try:
        logins = save_credentials(saved, path)
    except OSError as exc:
        raise CliFailure(f"logged in, but cannot save the token to {path}: {exc}") from exc
    until = f", valid until {show.when(saved.expires_at)}" if saved.expires_at else ""
    show.out().print(f"Logged in as [bold]{username}[/bold] at {saved.api_url}{until}.")
    others = sorted(name for name in logins.logins if name != username)
    if others:
        # Saying so matters: before named logins, a second login silently replaced the first.
        show.out().print(f"Also saved: {', '.join(others)}. Commands now act as {username}; "
                         f"`musketeer use {others[0]}` switches back, `musketeer --as {others[0]} "
                         "COMMAND` acts as them once.")
    show.out().print(f"Token saved to {path}", style="dim")


@reports_errors
def logout(ctx: typer.Context, api_url: ApiUrl = None) -> None:
    """Forget the current user's saved token (or that of the user given with --as)."""
    path = profile().credentials_path()
    gone = delete_credentials(path, chosen_user())
    if gone:
        show.out().print(f"Logged out {gone} (removed the token from {path}).")
        rest = sorted(read_logins(path).logins)
        if rest:
            show.out().print(f"Still saved: {', '.join(rest)}; `musketeer use NAME` picks one.")
    else:
        show.out().print("Not logged in; nothing to do.")


@reports_errors
def use(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="A user you logged in as before.", show_default=False)],
) -> None:
    """Make USERNAME's saved login the one the next commands use."""
    path = profile().credentials_path()
    chosen = use_login(path, username)
    if chosen is None:
        saved = sorted(read_logins(path).logins)
        known = f" (saved: {', '.join(saved)})" if saved else ""
        raise CliFailure(f"no saved login of {username}{known}: run `musketeer login {username}`")
    show.out().print(f"Now acting as [bold]{username}[/bold] at {chosen.api_url}.")


@reports_errors
def whoami(ctx: typer.Context, api_url: ApiUrl = None, as_json: AsJson = False) -> None:
    """Show the user the token in use belongs to, and the other saved logins."""
    with session(ctx).client(api_url) as client:
        user = client.me()
        url = client.api_url
    if as_json:
        return show.print_json(user)
    show.out().print(f"[bold]{user.username}[/bold] ({user.organization}) at {url}")
    others = sorted(name for name in read_logins(profile().credentials_path()).logins
                    if name != user.username)
    if others:
        show.out().print(f"Other saved logins: {', '.join(others)} (`musketeer use NAME` switches)",
                         style="dim")
