"""The user-facing `musketeer` commands that talk to the API: accounts, tasks, audit verify.

`infra/cli.py` owns the console script and calls `register(app)` to add them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from client.cli.accounts import login, logout, register_user, use, whoami
from client.cli.audit import audit_verify
from client.cli.contributions import tasks_contributions
from client.cli.keys import keys_register, keys_revoke, keys_rotate, keys_show
from client.cli.models import models_download, models_list
from client.cli.session import ClientFactory, Session, client_from_profile
from client.cli.tasks import (
    tasks_create,
    tasks_delete,
    tasks_history,
    tasks_join,
    tasks_leave,
    tasks_list,
    tasks_rounds,
    tasks_show,
    tasks_state,
)
from client.profile import choose


def choose_session(
    profile: Annotated[Path | None, typer.Option(
        "--profile", show_default=False,
        help="The platform's profile.json, or the folder `platform up --data-dir` made "
             "(default: MUSKETEER_PROFILE, ./.musketeer, ~/.musketeer).")] = None,
    as_user: Annotated[str | None, typer.Option(
        "--as", show_default=False, metavar="USER",
        help="Act as this user, with the login saved by `musketeer login USER` "
             "(default: the last login, or `musketeer use USER`).")] = None,
) -> None:
    """Musketeer: train one model together without moving the data."""
    choose(profile, as_user)


# Plain click help: rich help labels every flag `<bool>`, though a flag takes no value.
HELP_MARKUP = None

TASK_COMMANDS: dict[str, Callable[..., Any]] = {
    "list": tasks_list,
    "show": tasks_show,
    "create": tasks_create,
    "join": tasks_join,
    "leave": tasks_leave,
    "delete": tasks_delete,
    "history": tasks_history,
    "state": tasks_state,
    "rounds": tasks_rounds,
    "contributions": tasks_contributions,
}


KEY_COMMANDS: dict[str, Callable[..., Any]] = {
    "show": keys_show,
    "register": keys_register,
    "rotate": keys_rotate,
    "revoke": keys_revoke,
}


def register(app: typer.Typer, *, client_factory: ClientFactory | None = None) -> dict[str, typer.Typer]:
    """Add the account, `tasks` and `audit` commands to `app`; return the groups by name.

    `client_factory(api_url)` builds the client; tests pass one with a mock transport.
    Other packages add their own commands to the returned groups (the platform adds
    `audit replay`).
    """
    # click hands `obj` to each command's context; `session()` finds it there.
    settings = {"obj": Session(client_factory or client_from_profile)}
    app.callback()(choose_session)
    app.command("register", context_settings=settings)(register_user)
    app.command("login", context_settings=settings)(login)
    app.command("logout", context_settings=settings)(logout)
    app.command("whoami", context_settings=settings)(whoami)
    app.command("use", context_settings=settings)(use)

    tasks = typer.Typer(help="Browse, create, join and inspect federated tasks.", no_args_is_help=True,
                        rich_markup_mode=HELP_MARKUP)
    for name, command in TASK_COMMANDS.items():
        tasks.command(name)(command)
    app.add_typer(tasks, name="tasks", context_settings=settings)

    keys = typer.Typer(help="Your signing keys: every payload you send is signed.", no_args_is_help=True,
                       rich_markup_mode=HELP_MARKUP)
    for name, command in KEY_COMMANDS.items():
        keys.command(name)(command)
    app.add_typer(keys, name="keys", context_settings=settings)
    models = typer.Typer(help="The models your tasks produced: list them, download one.",
                         no_args_is_help=True, rich_markup_mode=HELP_MARKUP)
    models.command("list")(models_list)
    models.command("download")(models_download)
    app.add_typer(models, name="models", context_settings=settings)

    audit = typer.Typer(help="Check that the event log was not altered.", no_args_is_help=True,
                        rich_markup_mode=HELP_MARKUP)
    audit.command("verify")(audit_verify)
    app.add_typer(audit, name="audit", context_settings=settings)
    return {"tasks": tasks, "keys": keys, "audit": audit}
