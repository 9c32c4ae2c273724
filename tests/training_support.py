"""Helpers for end-to-end training tests: users, and daemons as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from api.client import MusketeerClient
from tests.conftest import ApiProcess, unique

PASSWORD = "federated-pass"


@dataclass
class Member:
    """A registered, logged-in user."""

    name: str
    client: MusketeerClient


def member(api: ApiProcess, prefix: str, organization: str = "Org") -> Member:
    """Register and log in a user with a unique name."""
    client = MusketeerClient(api.url)
    name = unique(prefix)
    client.register(name, PASSWORD, organization)
    client.login(name, PASSWORD)
    return Member(name, client)


def daemon_env(api: ApiProcess, who: Member, bootstrap: str, prefix: str) -> dict[str, str]:
    """The environment a daemon of `who` runs with: this API, broker, topics and token."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUSKETEER_PROFILE",)}
    env.update({"MUSKETEER_API_URL": api.url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "MUSKETEER_TOPIC_PREFIX": prefix, "MUSKETEER_TOKEN": who.client.token or "",
                "MUSKETEER_PROFILE": "/nonexistent/profile.json", "COLUMNS": "200",
                "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"})
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run `musketeer ARGS` as its own process, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from infra.cli import main; main()", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


def wait_all(processes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path],
             timeout_s: float) -> None:
    """Wait for every process; fail with their logs if one fails or time runs out."""
    for name, process in processes.items():
        try:
            code = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            for other in processes.values():
                other.kill()
            raise AssertionError(f"{name} did not finish:\n" + dump(logs)) from None
        assert code == 0, f"{name} exited {code}:\n" + dump(logs)


def dump(logs: dict[str, Path]) -> str:
    """Every log's tail, labelled."""
    return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}"
                     for name, path in logs.items() if path.exists())
