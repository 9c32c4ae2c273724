"""Does a long-running participant daemon's memory stay flat as batches of tasks come and go?

One real `musketeer participate` daemon serves --batches batches of --tasks tasks each
(digits-mlp, 2 rounds, quorum 1), one batch after another; each batch's tasks run at once,
with their aggregators in one process (tests/aggregate_many.py). After each batch, once every
final model is saved, it prints the daemon's RSS: flat from batch 2 on means nothing a finished
task held is kept. A table only, no verdict.

Starts its own broker and API on a fresh database of the local PostgreSQL, removes them after.

    .venv/bin/python bench/many_tasks_rss.py [--tasks 10] [--batches 3]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.apiproc import ApiProcess, start_api
from infra.tansu import start_broker
from tests.conftest import ADMIN_URL, drop_database, fresh_database, unique
from tests.training_support import Member, daemon_env, member, spawn

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
DIGITS = {"quorum": 1, "rounds": 2, "epochs": 1, "batch_size": 32, "learning_rate": 0.01,
          "model": "digits-mlp", "training_size": 200, "test_size": 40}


def run_batch(api: ApiProcess, bootstrap: str, prefix: str, alice: Member, john: Member, tasks: int,
              daemon: subprocess.Popen[bytes], models: Path, log: Path) -> tuple[int, int, float]:
    """One batch of tasks at once, to the end: (daemon peak, aggregators peak) RSS in bytes, seconds."""
    names = [unique(f"rss{i}") for i in range(tasks)]
    for name in names:
        alice.client.create_task(name, DIGITS)
        john.client.join(name)
    started = time.monotonic()
    with open(log, "ab") as out:
        aggregators = subprocess.Popen([sys.executable, "-m", "tests.aggregate_many", *names], cwd=ROOT,
                                       env=daemon_env(api, alice, bootstrap, prefix),
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    peaks = [0, 0]
    reports = [models / name / "report.json" for name in names]
    while not all(r.exists() for r in reports):
        if aggregators.poll() not in (None, 0) or daemon.poll() is not None or time.monotonic() - started > 600:
            raise SystemExit(f"batch failed; see {log} and the daemon's log")
        for index, process in enumerate((daemon, aggregators)):
            try:
                peaks[index] = max(peaks[index], psutil.Process(process.pid).memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.5)
    aggregators.wait(60)
    return peaks[0], peaks[1], time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    database_url = fresh_database(ADMIN_URL, "musketeer_manytasks")
    work = Path(tempfile.mkdtemp(prefix="musketeer-many-tasks-"))
    broker = start_broker(log_path=work / "broker.log")
    prefix = f"manytasks{uuid.uuid4().hex[:6]}"
    api = start_api(database_url, broker.bootstrap, work, MUSKETEER_TOPIC_PREFIX=prefix)
    rows = []
    try:
        alice, john = member(api, "alice"), member(api, "john")
        daemon = spawn(["participate", "--dataset", "digits", "--output", str(work / "models")],
                       daemon_env(api, john, broker.bootstrap, prefix), work / "john.log")
        try:
            for batch in range(1, args.batches + 1):
                peak, aggregators, seconds = run_batch(api, broker.bootstrap, prefix, alice, john, args.tasks,
                                                       daemon, work / "models", work / f"aggregators{batch}.log")
                time.sleep(1.0)  # the last worker thread ends just after its report is written
                after = psutil.Process(daemon.pid).memory_info().rss
                rows.append((batch, peak, after, aggregators, seconds))
                print(f"batch {batch} done in {seconds:.0f} s", flush=True)
        finally:
            daemon.send_signal(signal.SIGINT)
            daemon.wait(30)
    finally:
        api.stop()
        broker.stop()
        drop_database(database_url, ADMIN_URL)
        if len(rows) == args.batches:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)
    print(f"\none participant daemon, {args.tasks} tasks at once per batch (RSS MiB)")
    print(f"{'batch':>5} {'daemon peak':>12} {'daemon after':>13} {'aggregators peak':>17} {'seconds':>8}")
    for batch, peak, after, aggregators, seconds in rows:
        print(f"{batch:>5} {peak / MIB:12.0f} {after / MIB:13.0f} {aggregators / MIB:17.0f} {seconds:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
