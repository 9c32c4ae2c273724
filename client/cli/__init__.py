"""The user-facing `musketeer` commands that talk to the API: accounts, tasks, audit verify.

`infra/cli.py` owns the console script and calls `register(app)` to add them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from client.cli.accounts import login, logout, register_user, whoami
from client.cli.audit import audit_verify
from client.cli.contributions import tasks_contributions
from client.cli.session import ClientFactory, Session, client_from_profile
from client.cli.tasks import (
    tasks_create,
    tasks_delete,
    tasks_history,
    tasks_join,
    tasks_leave,
    tasks_list,
    tasks_show,
    tasks_state,
)

TASK_COMMANDS: dict[str, Callable[..., Any]] = {
    "list": tasks_list,
    "show": tasks_show,
    "create": tasks_create,
    "join": tasks_join,
    "leave": tasks_leave,
    "delete": tasks_delete,
    "history": tasks_history,
    "state": tasks_state,
    "contributions": tasks_contributions,
}


def register(app: typer.Typer, *, client_factory: ClientFactory | None = None) -> dict[str, typer.Typer]:
    """Add the account, `tasks` and `audit` commands to `app`; return the groups by name.

    `client_factory(api_url)` builds the client; tests pass one with a mock transport.
    Other packages add their own commands to the returned groups (the platform adds
    `audit replay`).
    """
    # click hands `obj` to each command's context; `session()` finds it there.
    settings = {"obj": Session(client_factory or client_from_profile)}
    app.command("register", context_settings=settings)(register_user)
    app.command("login", context_settings=settings)(login)
    app.command("logout", context_settings=settings)(logout)
    app.command("whoami", context_settings=settings)(whoami)

    tasks = typer.Typer(help="Browse, create, join and inspect federated tasks.", no_args_is_help=True)
    for name, command in TASK_COMMANDS.items():
        tasks.command(name)(command)
    app.add_typer(tasks, name="tasks", context_settings=settings)

    audit = typer.Typer(help="Check that the event log was not altered.", no_args_is_help=True)
    audit.command("verify")(audit_verify)
    app.add_typer(audit, name="audit", context_settings=settings)
    return {"tasks": tasks, "audit": audit}
