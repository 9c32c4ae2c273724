"""Helpers for end-to-end training tests: users, and daemons as real processes."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import MusketeerClient
from client.keys import KeyRing
from client.keys_api import ensure_registered
from infra.daemons import daemon_environment, describe_logs, spawn_musketeer
from tests.conftest import ApiProcess, unique

PASSWORD = "federated-pass"


@dataclass
class Member:
    """A registered, logged-in user, with a folder for their signing keys (their machine's)."""

    name: str
    client: MusketeerClient
    keys_dir: Path

    @property
    def keys(self) -> KeyRing:
        return KeyRing(self.keys_dir, self.name)

    def register_key(self) -> Ed25519PrivateKey:
        """Make and register this member's key, as their daemon would on its start."""
        return ensure_registered(self.client, self.keys)


def member(api: ApiProcess, prefix: str, organization: str = "Org") -> Member:
    """Register and log in a user with a unique name."""
    client = MusketeerClient(api.url)
    name = unique(prefix)
    client.register(name, PASSWORD, organization)
    client.login(name, PASSWORD)
    return Member(name, client, Path(tempfile.mkdtemp(prefix=f"keys-{name}-")))


def daemon_env(api: ApiProcess, who: Member, bootstrap: str, prefix: str) -> dict[str, str]:
    """The environment a daemon of `who` runs with: this API, broker, topics, token and keys."""
    return daemon_environment(api.url, who.client.token or "", bootstrap, prefix, who.keys_dir)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run `musketeer ARGS` as its own process, output to `log`."""
    return spawn_musketeer(args, env, log)


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
    return describe_logs(logs)


def train_welding(api: ApiProcess, bootstrap: str, prefix: str, tmp: Path, definition: dict[str, object],
                  prefix_name: str = "welding") -> tuple[str, Member, Member, Member, dict[str, Path]]:
    """A welding task trained to the end by real processes: the aggregator (held-out welds of
    seed 7) and robots FPS2 and FPD2. Returns the task's name, alice, FPS2, FPD2 and the logs."""
    alice, fps2, fpd2 = member(api, "alice"), member(api, "fps2"), member(api, "fpd2")
    name = unique(prefix_name)
    alice.client.create_task(name, definition)
    fps2.client.join(name)
    fpd2.client.join(name)
    logs = {who: tmp / f"{who}.log" for who in ("aggregator", "FPS2", "FPD2")}
    processes = {"aggregator": spawn(
        ["aggregate", name, "--eval-data", "welding", "--eval-seed", "7", "--round-timeout", "300"],
        daemon_env(api, alice, bootstrap, prefix), logs["aggregator"])}
    for robot, who in (("FPS2", fps2), ("FPD2", fpd2)):
        processes[robot] = spawn(["participate", name, "--dataset", "welding", "--robot", robot,
                                  "--output", str(tmp / robot)], daemon_env(api, who, bootstrap, prefix), logs[robot])
    wait_all(processes, logs, timeout_s=400)
    return name, alice, fps2, fpd2, logs
