"""The fault-injection harness: one 4-round task as real processes, a fault after some round."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ApiProcess, unique
from tests.training_support import Member, daemon_env, dump, member, spawn

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
        while True:
            task = self.people["alice"].client.get_task(self.name)
            if task.rounds_completed >= count:
                return
            assert task.status != "FAILED", f"the task failed before round {count}: " \
                f"{task.failure_reason}\n{dump(self.logs)}"
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
             fault_after: int = 1, **definition: Any) -> Run:
    """Create, join and train a task, injecting `fault` once round `fault_after` is recorded.

    The fault lands with ROUNDS - fault_after rounds still to go: a margin for a test
    process that notices the recorded round late on a loaded machine.
    """
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
        run.wait_rounds(fault_after)
        assert run.rounds_done() < ROUNDS, "the task finished before the fault:\n" + dump(run.logs)
        fault(run)  # the next round is under way: participants training, the aggregator waiting
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


def restart_after_kill(who: str) -> Callable[[Run], None]:
    def fault(run: Run) -> None:
        run.kill(who)
        time.sleep(1)
        run.start(who)

    return fault


