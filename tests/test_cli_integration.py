"""The `musketeer` CLI against a real API process, PostgreSQL and broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import app
from tests.conftest import ApiProcess, unique

pytestmark = pytest.mark.integration


class Shell:
    """Runs `musketeer …` as one user, with that user's own credentials file."""

    def __init__(self, api: ApiProcess, tmp_path: Path, database_url: str, user: str) -> None:
        self.user = user
        self.env = {
            "MUSKETEER_API_URL": api.url,
            "MUSKETEER_CREDENTIALS": str(tmp_path / f"{user}.json"),
            "MUSKETEER_PASSWORD": "cli-password-1",
            "DATABASE_URL": database_url,
            "MUSKETEER_TOKEN": "",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == code, f"{args}: {result.output}{result.stderr if result.stderr_bytes else ''}"
        return result.output + (result.stderr if result.stderr_bytes else "")


def sign_up(api: ApiProcess, tmp_path: Path, database_url: str, org: str) -> Shell:
    shell = Shell(api, tmp_path, database_url, unique("cli"))
    shell("register", shell.user, "--organization", org)
    shell("login", shell.user)
    return shell


def test_the_seed_walk_through_from_the_command_line(api: ApiProcess, tmp_path: Path,
                                                     database_url: str) -> None:
    """Register, log in, create from a seed JSON file, list, join, history, verify, replay."""
    alice = sign_up(api, tmp_path, database_url, "IBM")
    john = sign_up(api, tmp_path, database_url, "TREE")
    definition = tmp_path / "seed.json"
    definition.write_text(json.dumps({"quorum": 1, "round": 2, "epoch": 1, "model": "digits-mlp",
                                      "aggregator": "neural_network.Aggregator"}))
    name = unique("cli-task")

    alice("tasks", "create", name, "--definition", str(definition))
    shown = json.loads(alice("tasks", "show", name, "--json"))
    assert shown["definition"]["rounds"] == 2 and shown["definition"]["algorithm"] == "fedavg"
    assert name in john("tasks", "list", "--search", name)
    john("tasks", "join", name)
    again = john("tasks", "join", name, code=1)
    assert "already joined" in again
    history = json.loads(alice("tasks", "history", name, "--json"))
    assert [e["type"] for e in history["items"]] == ["TaskCreated", "ParticipantJoined"]
    assert "intact" in alice("audit", "verify")
    replay = alice("audit", "replay")
    assert "users" in replay and "tasks" in replay and "memberships" in replay
    denied = john("tasks", "delete", name, "--yes", code=1)
    assert "only the creator" in denied


def test_bad_input_exits_non_zero_with_the_servers_message(api: ApiProcess, tmp_path: Path,
                                                           database_url: str) -> None:
    """A definition the server refuses is reported with the field, exit 1; nothing is created."""
    alice = sign_up(api, tmp_path, database_url, "IBM")
    name = unique("cli-bad")
    output = alice("tasks", "create", name, "--quorum", "3", "--rounds", "1",
                   "--max-participants", "2", code=1)
    assert "max_participants" in output
    missing = alice("tasks", "show", name, code=1)
    assert "does not exist" in missing


def test_commands_without_login_say_how_to_log_in(api: ApiProcess, tmp_path: Path,
                                                  database_url: str) -> None:
    """No saved token: a clear hint, exit 1."""
    stranger = Shell(api, tmp_path, database_url, unique("nobody"))
    output = stranger("tasks", "list", code=1)
    assert "musketeer login" in output
