"""Many tasks at once: one real participant daemon serves ten running tasks to the end, exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from schema import dataplane
from streams.codec import bundle_to_weights, decode_bundle
from streams.reader import PayloadReader, Received
from tests.conftest import ApiProcess, eventually, unique
from tests.training_support import daemon_env, dump, member, spawn, wait_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TASKS = 10
# Small and short: the test pays for ten tasks at once, not for training.
DIGITS = {"quorum": 1, "rounds": 2, "epochs": 1, "batch_size": 32, "learning_rate": 0.01,
          "model": "digits-mlp", "training_size": 200, "test_size": 40}
Weights = list[np.ndarray[Any, Any]]


def last_weights(bootstrap: str, topic: str, kind: str, round_no: int) -> Weights:
    """The weights of the payload of `kind` and `round_no` on `topic` (the last, if sent twice)."""
    found: Weights | None = None
    with PayloadReader(bootstrap, [topic]) as reader:
        for _ in range(20):
            deliveries = reader.poll(0.5)
            for payload in (d.payload for d in deliveries if isinstance(d, Received)):
                if (payload.kind, payload.round) == (kind, round_no):
                    found = bundle_to_weights(decode_bundle(payload.data))
            if found is not None and not deliveries:
                break
    assert found is not None, f"no {kind} of round {round_no} on {topic}"
    return found


class MemoryWatch:
    """Samples processes' RSS twice a second, to print a table (memory is shown, never asserted:
    a threshold would depend on the machine and TensorFlow's version)."""

    def __init__(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        self.samples: dict[str, list[int]] = {name: [] for name in processes}
        self.processes = processes
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(0.5):
            for name, process in self.processes.items():
                try:
                    rss = psutil.Process(process.pid).memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                if rss:  # 0: it exited, and is not reaped yet
                    self.samples[name].append(rss)

    def table(self) -> str:
        """First, peak and last RSS of each process, in MiB."""
        self.stopped.set()
        self.thread.join()
        rows = [f"{'process':<12} {'first':>8} {'peak':>8} {'last':>8}  (RSS MiB, {TASKS} tasks)"]
        for name, rss in self.samples.items():
            if rss:
                rows.append(f"{name:<12} {rss[0] / 2**20:8.0f} {max(rss) / 2**20:8.0f} {rss[-1] / 2**20:8.0f}")
        return "\n".join(rows)


def test_one_participant_daemon_serves_ten_tasks_at_once(api: ApiProcess, broker: Any, topic_prefix: str,
                                                         tmp_path: Path) -> None:
    """One `musketeer participate` daemon follows ten tasks that run at the same time, each with
    its own aggregator (ten real Aggregators in one process, tests/aggregate_many.py): every task
    completes both rounds with john recorded, the final model john saved is the one each task
    recorded (same digest), and each final model is, bit for bit, john's round-2 update to that
    task (the mean of one update): no task took another's messages."""
    alice, john = member(api, "alice"), member(api, "john")
    names = [unique(f"task{i}") for i in range(TASKS)]
    for name in names:
        alice.client.create_task(name, DIGITS)
        john.client.join(name)
    logs = {"john": tmp_path / "john.log", "aggregators": tmp_path / "aggregators.log"}
    models = tmp_path / "models"
    daemon = spawn(["participate", "--dataset", "digits", "--output", str(models)],
                   daemon_env(api, john, broker.bootstrap, topic_prefix), logs["john"])
    try:
        with open(logs["aggregators"], "ab") as out:
            aggregators = subprocess.Popen(
                [sys.executable, "-m", "tests.aggregate_many", *names], cwd=ROOT,
                env=daemon_env(api, alice, broker.bootstrap, topic_prefix), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        memory = MemoryWatch({"daemon": daemon, "aggregators": aggregators})
        wait_all({"aggregators": aggregators}, logs, timeout_s=400)
        # The aggregators are done once they broadcast the final models; the daemon saves each
        # (report.json last) a moment later.
        reports = [models / name / "report.json" for name in names]
        assert eventually(lambda: all(r.exists() for r in reports), 60), "reports missing:\n" + dump(logs)
        assert daemon.poll() is None, "the long-running daemon exited:\n" + dump(logs)
        print("\n" + memory.table())  # shown with -s; the daemon's last sample is after all ten ended
    finally:
        daemon.send_signal(signal.SIGINT)
        stopped = daemon.wait(30)
    assert stopped == 130, "the daemon did not stop in order on Ctrl-C:\n" + dump(logs)

    for name in names:
        events = [e.type for e in alice.client.task_events(name)]
        assert events.count("RoundCompleted") == 2 and events[-1] == "TaskCompleted", dump(logs)
        assert "UpdateRejected" not in events, dump(logs)
        assert [r.participants for r in alice.client.rounds(name)] == [[john.name], [john.name]]
        task = alice.client.get_task(name)
        report = json.loads((models / name / "report.json").read_text())
        assert report["rounds_trained"] == [1, 2]
        assert report["final_sha256"] == task.model_sha256
        final = last_weights(broker.bootstrap, str(task.topics.broadcast), dataplane.FINAL, 2)
        update = last_weights(broker.bootstrap, str(task.topics.updates), dataplane.UPDATE, 2)
        assert len(final) == len(update)
        for folded, sent in zip(final, update, strict=True):
            assert folded.dtype == sent.dtype and np.array_equal(folded, sent)
