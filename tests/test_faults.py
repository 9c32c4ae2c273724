"""Fault injection: SIGKILL a component mid-round, restart it, and the task still completes.

Each case runs a 4-round task with two participants as real processes, kills one component
in the middle of round 3, restarts it, and checks: COMPLETED, exactly one RoundCompleted per
round, the hash chain verifies, and the final accuracy is within 2 points of a fault-free run
with the same seed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiProcess, start_api, unique
from tests.training_support import Member, daemon_env, dump, member, spawn

pytestmark = pytest.mark.integration

ROUNDS = 4
DEFINITION = {"quorum": 2, "rounds": ROUNDS, "epochs": 3, "batch_size": 32, "learning_rate": 0.01,
              "model": "digits-mlp", "test_size": 60, "seed": 824988}


@dataclass
class Run:
    """One task's processes, so a fault can kill and restart any of them."""

    api: ApiProcess
    bootstrap: str
    prefix: str
    tmp: Path
    name: str
    people: dict[str, Member]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def args(self, who: str) -> list[str]:
        if who == "aggregator":
            return ["aggregate", self.name, "--eval-data", "digits", "--eval-shard", "3/3",
                    "--round-timeout", "300"]
        shard = "1/3" if who == "john" else "2/3"
        return ["participate", self.name, "--dataset", "digits", "--shard", shard,
                "--output", str(self.tmp / who)]

    def start(self, who: str) -> None:
        owner = self.people["alice" if who == "aggregator" else who]
        env = daemon_env(self.api, owner, self.bootstrap, self.prefix)
        self.processes[who] = spawn(self.args(who), env, self.logs[who])

    def kill(self, who: str) -> None:
        self.processes[who].kill()
        self.processes[who].wait(10)

    def rounds_done(self) -> int:
        return self.people["alice"].client.get_task(self.name).rounds_completed

    def wait_rounds(self, count: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while self.rounds_done() < count:
            assert time.monotonic() < deadline, f"round {count} never came:\n{dump(self.logs)}"
            time.sleep(0.05)

    def wait_done(self, timeout_s: float = 400) -> dict[str, int]:
        codes = {}
        for who, process in self.processes.items():
            try:
                codes[who] = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{who} did not finish:\n{dump(self.logs)}") from None
        return codes


def run_task(api: ApiProcess, bootstrap: str, prefix: str, tmp: Path,
             fault: Callable[[Run], None] | None = None, expect_ok: bool = True,
             **definition: Any) -> Run:
    """Create, join and train a task, injecting `fault` once round 2 is recorded."""
    people = {who: member(api, who) for who in ("alice", "john", "jack")}
    name = unique("fault")
    people["alice"].client.create_task(name, {**DEFINITION, **definition})
    people["john"].client.join(name)
    people["jack"].client.join(name)
    run = Run(api, bootstrap, prefix, tmp, name, people, {},
              {who: tmp / f"{name}-{who}.log" for who in ("aggregator", "john", "jack")})
    for who in ("aggregator", "john", "jack"):
        run.start(who)
    if fault is not None:
        run.wait_rounds(2)
        fault(run)  # round 3 is under way: participants are training, the aggregator waiting
    codes = run.wait_done()
    if expect_ok:
        assert all(code == 0 for code in codes.values()), f"{codes}:\n{dump(run.logs)}"
    return run


def final_accuracy(run: Run) -> float:
    return run.people["alice"].client.rounds(run.name)[-1].eval_metrics["accuracy"]


def assert_recovered(run: Run, baseline: float) -> None:
    client = run.people["alice"].client
    events = client.task_events(run.name)
    types = [e.type for e in events]
    assert types[-1] == "TaskCompleted", dump(run.logs)
    rounds = [e.data["round"] for e in events if e.type == "RoundCompleted"]
    assert rounds == list(range(1, ROUNDS + 1)), f"rounds recorded: {rounds}"
    assert client.verify().ok
    assert abs(final_accuracy(run) - baseline) <= 0.02, (final_accuracy(run), baseline)


@pytest.fixture(scope="session")
def baseline(api: ApiProcess, broker: Any, topic_prefix: str,
             tmp_path_factory: pytest.TempPathFactory) -> float:
    """The final accuracy of the same task with no fault."""
    # Session-wide: the database fault test (another module) compares with it too.
    run = run_task(api, broker.bootstrap, topic_prefix, tmp_path_factory.mktemp("baseline"))
    return final_accuracy(run)


def restart_after_kill(who: str) -> Callable[[Run], None]:
    def fault(run: Run) -> None:
        run.kill(who)
        time.sleep(1)
        run.start(who)

    return fault


@pytest.mark.parametrize("who", ["aggregator", "john"])
def test_a_killed_daemon_restarts_and_the_task_completes(
    who: str, baseline: float, api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL the aggregator (or a participant) mid-round; the restarted one carries on."""
    run = run_task(api, broker.bootstrap, topic_prefix, tmp_path, restart_after_kill(who))
    assert_recovered(run, baseline)


def test_a_killed_api_restarts_and_the_task_completes(
    baseline: float, database_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL the API process mid-round; the daemons wait for it and finish the task."""
    own_api = start_api(database_url, broker.bootstrap, tmp_path, topic_prefix)

    def fault(run: Run) -> None:
        own_api.kill()
        time.sleep(2)
        own_api.restart()

    try:
        run = run_task(own_api, broker.bootstrap, topic_prefix, tmp_path, fault)
        assert_recovered(run, baseline)
        assert "waiting for the API" in "".join(p.read_text() for p in run.logs.values())
    finally:
        own_api.stop()


@pytest.mark.parametrize("min_updates, outcome", [(1, "COMPLETED"), (2, "FAILED")])
def test_a_participant_that_never_returns(min_updates: int, outcome: str, api: ApiProcess,
                                          broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """min_updates 1: the rounds go on and record who was missed; 2: the task fails naming jack."""

    def fault(run: Run) -> None:
        run.kill("jack")
        del run.processes["jack"]

    run = run_task(api, broker.bootstrap, topic_prefix, tmp_path, fault, expect_ok=False,
                   round_timeout_s=20, min_updates=min_updates)
    client = run.people["alice"].client
    jack = run.people["jack"].name
    task = client.get_task(run.name)
    assert task.status == outcome, dump(run.logs)
    if outcome == "FAILED":
        assert run.processes["aggregator"].returncode == 1
        assert jack in (task.failure_reason or "") and "missing" in (task.failure_reason or "")
        return
    events = client.task_events(run.name)
    missed = [(e.data["round"], e.data["username"]) for e in events
              if e.type == "ParticipantMissedRound"]
    assert [who for _, who in missed] == [jack] * len(missed) and len(missed) >= 2
    assert [r for r, _ in missed] == sorted(r for r, _ in missed)
    assert events[-1].type == "TaskCompleted"
    rounds = client.rounds(run.name)
    assert len(rounds) == ROUNDS and rounds[-1].participants == [run.people["john"].name]
    contact = {p.username: p.last_contact_at for p in task.participants}
    assert contact[run.people["john"].name] > contact[jack]
