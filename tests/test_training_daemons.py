"""Daemon behaviour: one long-running participant serves several tasks; failures are recorded."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiProcess, eventually, unique
from tests.training_support import daemon_env, dump, member, spawn, wait_all

pytestmark = pytest.mark.integration

DIGITS = {"quorum": 1, "rounds": 2, "epochs": 3, "batch_size": 32, "learning_rate": 0.01,
          "model": "digits-mlp", "test_size": 40}


def wait_for_text(log: Path, text: str, logs: dict[str, Path], timeout_s: float = 120) -> None:
    """Wait until `text` appears in `log`."""
    assert eventually(lambda: log.exists() and text in log.read_text(), timeout_s), \
        f"no '{text}' in {log.name}:\n" + dump(logs)


def wait_for_file(path: Path, logs: dict[str, Path], timeout_s: float = 60) -> None:
    """Wait until `path` exists."""
    assert eventually(path.exists, timeout_s), f"{path} never appeared:\n" + dump(logs)


def test_one_participant_daemon_serves_two_tasks_at_once(api: ApiProcess, broker: Any,
                                                         topic_prefix: str, tmp_path: Path) -> None:
    """A daemon started before the second join trains both tasks; neither mixes messages."""
    alice, bob, john = member(api, "alice"), member(api, "bob"), member(api, "john")
    first, second = unique("first"), unique("second")
    alice.client.create_task(first, DIGITS)
    bob.client.create_task(second, {**DIGITS, "rounds": 3})
    john.client.join(first)
    logs = {who: tmp_path / f"{who}.log" for who in ("john", "alice", "bob")}
    daemon = spawn(["participate", "--dataset", "digits", "--shard", "1/2",
                    "--output", str(tmp_path / "models")],
                   daemon_env(api, john, broker.bootstrap, topic_prefix), logs["john"])
    try:
        aggregators = {"alice": spawn(["aggregate", first, "--round-timeout", "300"],
                                      daemon_env(api, alice, broker.bootstrap, topic_prefix),
                                      logs["alice"])}
        # The daemon is serving the first task before the second one even has its member.
        wait_for_text(logs["john"], f"{first}: started, joining training", logs)
        john.client.join(second)
        aggregators["bob"] = spawn(["aggregate", second, "--round-timeout", "300"],
                                   daemon_env(api, bob, broker.bootstrap, topic_prefix), logs["bob"])
        wait_all(aggregators, logs, timeout_s=400)
        # The aggregators are done once they have broadcast the final model; the daemon saves it
        # (report.json last) a moment later.
        for name in (first, second):
            wait_for_file(tmp_path / "models" / name / "report.json", logs)
        assert daemon.poll() is None, "the long-running daemon exited:\n" + dump(logs)
    finally:
        daemon.send_signal(signal.SIGINT)
        stopped = daemon.wait(30)
    assert stopped == 130, "the daemon did not stop in order on Ctrl-C:\n" + dump(logs)

    for owner, name, rounds in ((alice, first, 2), (bob, second, 3)):
        events = owner.client.task_events(name)
        assert [e.type for e in events].count("RoundCompleted") == rounds
        assert events[-1].type == "TaskCompleted"
        assert "UpdateRejected" not in [e.type for e in events], dump(logs)
        assert (tmp_path / "models" / name / "model.keras").exists()


def test_an_unrecoverable_error_records_task_failed(api: ApiProcess, broker: Any,
                                                   topic_prefix: str, tmp_path: Path) -> None:
    """Eval data the model cannot read (welding's 4 features for digits' 64) surfaces only once
    the model exists: the task fails with that reason, and the CLI exits 1."""
    alice, john = member(api, "alice"), member(api, "john")
    name = unique("badeval")
    alice.client.create_task(name, {**DIGITS, "rounds": 1})
    john.client.join(name)
    john.register_key()  # as his daemon would: the task starts only once every member has a key
    log = tmp_path / "aggregator.log"
    process = spawn(["aggregate", name, "--eval-data", "welding"],
                    daemon_env(api, alice, broker.bootstrap, topic_prefix), log)
    assert process.wait(120) == 1, log.read_text()
    task = alice.client.get_task(name)
    assert task.status == "FAILED"
    assert "4 features per sample" in (task.failure_reason or ""), task.failure_reason
    assert "4 features per sample" in log.read_text()


def test_only_the_creator_can_aggregate(api: ApiProcess, broker: Any, topic_prefix: str,
                                        tmp_path: Path) -> None:
    """Someone else's task: a clear refusal, and the task is untouched."""
    alice, mallory = member(api, "alice"), member(api, "mallory")
    name = unique("notyours")
    alice.client.create_task(name, DIGITS)
    log = tmp_path / "aggregator.log"
    process = spawn(["aggregate", name], daemon_env(api, mallory, broker.bootstrap, topic_prefix),
                    log)
    assert process.wait(120) == 1
    assert "only its creator" in log.read_text()
    assert alice.client.get_task(name).status == "CREATED"


def test_deleting_a_running_task_stops_its_participant_cleanly(api: ApiProcess, broker: Any,
                                                               topic_prefix: str, tmp_path: Path) -> None:
    """The creator deletes a task while a participant follows it: the daemon notices, says why
    and exits 1 (no crash: the topics it reads stay until the retention sweep)."""
    alice, john = member(api, "alice"), member(api, "john")
    name = unique("deleted")
    alice.client.create_task(name, DIGITS)
    john.client.join(name)
    alice.register_key()
    john.register_key()  # in his keys folder: his daemon signs with it
    alice.client.start_task(name)  # no aggregator: john waits for a broadcast that never comes
    log = tmp_path / "john.log"
    process = spawn(["participate", name, "--dataset", "digits", "--output", str(tmp_path / "out")],
                    daemon_env(api, john, broker.bootstrap, topic_prefix), log)
    wait_for_text(log, "following the aggregator's broadcasts", {"john": log})

    alice.client.delete_task(name)

    assert process.wait(60) == 1, log.read_text()
    assert f"task '{name}' is DELETED" in log.read_text()


def test_ctrl_c_stops_a_daemon_mid_task_in_order(api: ApiProcess, broker: Any, topic_prefix: str,
                                                 tmp_path: Path) -> None:
    """SIGINT while the daemon follows a running task: its worker leaves the task at its next
    step and closes its own connections, and the daemon exits 130 (not killed, not hung)."""
    alice, john = member(api, "alice"), member(api, "john")
    name = unique("stopped")
    alice.client.create_task(name, DIGITS)
    john.client.join(name)
    for who in (alice, john):  # as their daemons would: a task starts once every member has a key
        who.register_key()
    alice.client.start_task(name)  # started, with no aggregator: the worker waits for round 1
    logs = {"john": tmp_path / "john.log"}
    daemon = spawn(["participate", "--dataset", "digits", "--output", str(tmp_path / "models")],
                   daemon_env(api, john, broker.bootstrap, topic_prefix), logs["john"])
    try:
        wait_for_text(logs["john"], f"{name}: following the aggregator's broadcasts", logs)
    finally:
        daemon.send_signal(signal.SIGINT)
        code = daemon.wait(30)
    log = logs["john"].read_text()
    assert code == 130, dump(logs)
    assert "SIGINT: stopping after the current step" in log, dump(logs)
    assert f"{name}: left the task as the daemon stops" in log, dump(logs)
    assert "Traceback" not in log, dump(logs)
    assert alice.client.get_task(name).status == "STARTED"  # a restarted daemon resumes it
