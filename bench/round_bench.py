"""Benchmark federated rounds: seconds per round and the aggregator's memory, by model size and N.

For every (P parameters, N participants) it creates a task (quorum N, --rounds
rounds, 1 epoch), runs the real aggregator (`musketeer aggregate TASK --model
F.keras`) as its own process, and answers every round from N no-op participant
threads that send the received weights back unchanged. It prints seconds per
round and the aggregator's RSS (measured by bench/aggregator_rss.py), to check
that aggregation memory does not grow with N (DESIGN.md: updates are folded
into a running sum as they arrive). --serialise-sends makes the participants
send one at a time, to tell the fold apart from reassembling updates that
arrive interleaved on the one-partition updates topic.

Starts its own broker (unless --bootstrap is given) and API process on a fresh
database of the local PostgreSQL, and removes them at the end.

    .venv/bin/python bench/round_bench.py [--rounds 3] [--params 1000000,10000000]
                                          [--participants 2,8] [--serialise-sends]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import MusketeerClient, Task
from client.keys import public_text
from infra.apiproc import start_api
from infra.procs import log_tail
from infra.tansu import start_broker
from schema import dataplane
from schema.dataplane import UpdateMeta
from streams.codec import bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.reader import PayloadReader, Received, Rejected
from streams.signing import Signer
from streams.writer import PayloadWriter
from tests.conftest import drop_database, fresh_database

PASSWORD = "bench-password"
MIB = 1024 * 1024
WRAPPER = Path(__file__).resolve().parent / "aggregator_rss.py"
INPUT_WIDTH = 1000  # the model is Input((1000,)) -> Dense(units): 1001 * units parameters


class BenchFailed(RuntimeError):
    """One combination did not complete; the message says why."""


@dataclass
class Platform:
    """What every combination shares: the API, the broker, the topic prefix and a scratch folder."""

    api_url: str
    bootstrap: str
    prefix: str
    run: str
    work: Path


@dataclass
class Row:
    """The measurements of one (P, N) combination."""

    params: int
    participants: int
    rounds: int
    durations: list[float]
    cycles: list[float]
    task_s: float
    payload_bytes: int
    memory: dict[str, Any]


# -- the model ----------------------------------------------------------------


def build_model_file(params: int, folder: Path, tag: str) -> tuple[Path, int]:
    """A freshly initialised .keras model with about `params` float32 weights; path and count.

    One per task, never shared: no-op rounds give back the initial weights, and the API
    stores artifacts by sha256 alone (first task wins), so a second task uploading
    byte-identical round models would fail with "upload the round's model before
    recording the round".
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ml.keras_model import keras

    units = max(1, round(params / (INPUT_WIDTH + 1)))
    model = keras.Sequential([keras.Input((INPUT_WIDTH,)), keras.layers.Dense(units)],
                             name=f"bench_{units}")
    path = folder / f"model-{tag}.keras"
    model.save(path)
    return path, int(model.count_params())


# -- no-op participants ---------------------------------------------------------


class NoOpParticipant(threading.Thread):
    """Answers every broadcast round with the weights it received, unchanged (no training)."""

    def __init__(self, bootstrap: str, task: Task, username: str, signer: Signer, abort: threading.Event,
                 send_lock: threading.Lock | None = None) -> None:
        super().__init__(name=f"participant-{username}", daemon=True)
        self.bootstrap = bootstrap
        if not (task.topics.broadcast and task.topics.updates):
            raise BenchFailed(f"task {task.name} has no data-plane topics")
        self.task = task
        self.broadcast_topic: str = task.topics.broadcast
        self.updates_topic: str = task.topics.updates
        self.username = username
        self.signer = signer  # every update is signed, as a real participant's
        self.abort = abort
        self.send_lock = send_lock
        self.answered: list[int] = []
        self.payload_bytes = 0
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # reported by the bench, not lost in a thread
            self.error = exc

    def _follow(self) -> None:
        writer = PayloadWriter(self.bootstrap, signer=self.signer)
        with PayloadReader(self.bootstrap, [self.broadcast_topic]) as broadcasts:
            while not self.abort.is_set():
                for delivery in broadcasts.poll(1.0):
                    if self._handle(delivery, writer):
                        self.finished = True
                        return

    def _handle(self, delivery: Received | Rejected, writer: PayloadWriter) -> bool:
        """Answer a `weights` broadcast; True once the final model has arrived."""
        if isinstance(delivery, Rejected):
            raise BenchFailed(f"{self.username}: a broadcast was rejected: {delivery.reason}")
        payload = delivery.payload
        if payload.task_id != self.task.task_id:
            return False
        if payload.kind == dataplane.STOP:
            raise BenchFailed(f"{self.username}: the aggregator stopped the task")
        if payload.kind == dataplane.WEIGHTS and payload.round not in self.answered:
            self._answer(writer, payload.round, payload.data)
        return payload.kind == dataplane.FINAL

    def _answer(self, writer: PayloadWriter, round_no: int, data: bytes) -> None:
        # The real participant's update (TaskWorker._train_round) minus the training.
        weights = bundle_to_weights(decode_bundle(data))
        meta = UpdateMeta(samples=100, test_samples=0, metrics={})
        update = encode_bundle(keras_weights_to_bundle(weights, meta.model_dump()))
        self.payload_bytes = len(update)
        # With --serialise-sends one update is on the wire at a time, so the
        # aggregator never sees frames of two updates interleaved.
        with self.send_lock or contextlib.nullcontext():
            writer.send(self.updates_topic, task_id=self.task.task_id, round=round_no,
                        kind=dataplane.UPDATE, sender=self.username, payload=update,
                        key=self.username)
        self.answered.append(round_no)


# -- users and the task -------------------------------------------------------------


def user(platform: Platform, name: str) -> MusketeerClient:
    """Register and log in `name`."""
    client = MusketeerClient(platform.api_url)
    client.register(name, PASSWORD, f"org-{name}")
    client.login(name, PASSWORD)
    return client


def keyed_user(platform: Platform, name: str) -> tuple[MusketeerClient, Signer]:
    """Register and log in `name` with a signing key of their own."""
    client = user(platform, name)
    key = Ed25519PrivateKey.generate()
    client.register_key(public_text(key))
    return client, Signer(key)


def create_task(platform: Platform, params: int, n: int, rounds: int
                ) -> tuple[MusketeerClient, Task, dict[str, Signer]]:
    """A creator, a task with quorum n, and n participants who joined it."""
    tag = f"rb{platform.run}p{params}n{n}"
    creator = user(platform, f"{tag}-creator")
    task = creator.create_task(f"{tag}-task", {"quorum": n, "rounds": rounds, "epochs": 1, "model": "user"})
    signers: dict[str, Signer] = {}
    for name in (f"{tag}-p{i}" for i in range(n)):
        client, signers[name] = keyed_user(platform, name)
        client.join(task.name)
    return creator, task, signers


# -- the aggregator process ---------------------------------------------------------


def aggregator_env(platform: Platform, token: str, rss_file: Path) -> dict[str, str]:
    """The environment the tests give a daemon: this API, broker, topics and token."""
    env = {k: v for k, v in os.environ.items() if k != "MUSKETEER_PROFILE"}
    env.update({"MUSKETEER_API_URL": platform.api_url, "KAFKA_BOOTSTRAP_SERVERS": platform.bootstrap,
                "MUSKETEER_TOPIC_PREFIX": platform.prefix, "MUSKETEER_TOKEN": token,
                "MUSKETEER_PROFILE": "/nonexistent/profile.json", "COLUMNS": "200",
                "TF_CPP_MIN_LOG_LEVEL": "2", "ROUND_BENCH_RSS_FILE": str(rss_file),
                "MUSKETEER_KEYS_DIR": str(platform.work / "keys")})
    return env


class LogFollower:
    """Prints the lines a log file gains, indented, as progress."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self.offset = 0

    def show_new(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.strip():
                print(f"    [{self.label}] {line.rstrip()}", flush=True)


def run_aggregator(platform: Platform, task: Task, token: str, model_file: Path,
                   participants: list[NoOpParticipant], timeout_s: float) -> tuple[float, Path, Path]:
    """Run the aggregator to its exit; its wall time, log and memory record."""
    log = platform.work / f"aggregator-{task.name}.log"
    rss_file = platform.work / f"rss-{task.name}.json"
    command = [sys.executable, str(WRAPPER), "aggregate", task.name, "--model", str(model_file),
               "--round-timeout", "600"]
    follower = LogFollower(log, "aggregator")
    started = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=aggregator_env(platform, token, rss_file),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            failed = [p for p in participants if p.error is not None]
            if failed:
                raise BenchFailed(f"participant {failed[0].username} failed: {failed[0].error}")
            if time.monotonic() - started > timeout_s:
                raise BenchFailed(f"the aggregator did not finish within {timeout_s:g} s")
            follower.show_new()
            time.sleep(0.5)
        follower.show_new()
        if process.returncode != 0:
            raise BenchFailed(f"the aggregator exited {process.returncode}")
        return time.monotonic() - started, log, rss_file
    except BaseException as exc:
        stop_process(process)
        raise BenchFailed(f"{exc}\n--- aggregator log tail ({log})\n{log_tail(log, 40)}") from exc


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- one combination ----------------------------------------------------------------


def bench_combination(platform: Platform, model_file: Path, params: int, n: int,
                      rounds: int, serialise: bool) -> Row:
    """Run one task of `rounds` rounds with n no-op participants; its measurements."""
    creator, task, names = create_task(platform, params, n, rounds)
    abort = threading.Event()
    lock = threading.Lock() if serialise else None
    participants = [NoOpParticipant(platform.bootstrap, task, name, signer, abort, lock)
                    for name, signer in names.items()]
    for participant in participants:
        participant.start()
    try:
        timeout_s = 300.0 + rounds * 600.0
        _wall, _log, rss_file = run_aggregator(platform, task, creator.token or "", model_file,
                                               participants, timeout_s)
        for participant in participants:
            participant.join(60)
        unfinished = [p.username for p in participants if not p.finished]
        if unfinished:
            raise BenchFailed(f"participants never saw the final model: {', '.join(unfinished)}")
    finally:
        abort.set()
    return measure(creator, task, params, n, rounds, participants, rss_file)


def measure(creator: MusketeerClient, task: Task, params: int, n: int, rounds: int,
            participants: list[NoOpParticipant], rss_file: Path) -> Row:
    """Rounds and timings from the API, memory from the aggregator's record."""
    recorded = creator.rounds(task.name)
    if len(recorded) != rounds:
        raise BenchFailed(f"task {task.name}: {len(recorded)} rounds recorded, expected {rounds}")
    durations = [float(r.duration_s or 0.0) for r in recorded]
    stamps = [r.recorded_at for r in recorded]
    cycles = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps) if a and b]
    events = {e.type: e.recorded_at for e in creator.task_events(task.name)}
    started, completed = events.get("TaskStarted"), events.get("TaskCompleted")
    task_s = (completed - started).total_seconds() if started and completed else float("nan")
    memory = json.loads(rss_file.read_text())
    return Row(params, n, rounds, durations, cycles, task_s,
               max(p.payload_bytes for p in participants), memory)


# -- the table ------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "n/a"


def print_table(rows: list[Row], serialised: bool) -> None:
    columns = ["P (params)", "N", "rounds", "s/round mean", "s/round max", "cycle s mean",
               "task s", "payload MiB", "agg RSS before r1 MiB", "agg peak RSS in rounds MiB",
               "rounds add MiB", "agg peak RSS whole run MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for row in rows:
        m = row.memory
        baseline, in_rounds = m.get("baseline_rss_kib"), m.get("rounds_peak_kib")
        whole = max(m.get("setup_peak_kib", 0), m.get("ru_maxrss_kib", 0), m.get("exit_hwm_kib", 0))
        added = f"{(in_rounds - baseline) / 1024:.0f}" if baseline and in_rounds else "n/a"
        cycle = f"{statistics.mean(row.cycles):.2f}" if row.cycles else "n/a"
        cells = [f"{row.params:,}", str(row.participants), str(row.rounds),
                 f"{statistics.mean(row.durations):.2f}", f"{max(row.durations):.2f}", cycle,
                 f"{row.task_s:.1f}", f"{row.payload_bytes / MIB:.1f}", mib(baseline),
                 mib(in_rounds), added, mib(whole)]
        print("| " + " | ".join(cells) + " |")
    print("\ns/round = the aggregator's own duration_s per round (GET /v1/tasks/{name}/rounds): from "
          "after the round's weights broadcast is acknowledged to the round being recorded (all N "
          "updates received and folded, round model uploaded). cycle s = time between consecutive "
          "rounds' recorded_at (adds the broadcast). task s = TaskStarted to TaskCompleted (includes "
          "the aggregator's TensorFlow import and model load, which follow the start). "
          "Participants are no-op threads in the bench process (no training). Aggregator RSS: "
          "VmRSS when round 1 begins (TensorFlow loaded, model built, round 1 broadcast), the peak "
          "(VmHWM, reset at that moment) over the rounds, and the process's peak over the whole run.")
    if serialised:
        print("Updates were sent one at a time (--serialise-sends), not concurrently.")


# -- platform set-up and main ----------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per task (default 3)")
    parser.add_argument("--params", type=int_list, default=[1_000_000, 10_000_000],
                        help="model sizes in float32 parameters (default 1000000,10000000)")
    parser.add_argument("--participants", type=int_list, default=[2, 8],
                        help="participant counts (default 2,8)")
    parser.add_argument("--serialise-sends", action="store_true",
                        help="diagnostic: participants send their updates one at a time "
                             "(default: all at once, as independent sites would)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL allowed to create a scratch database")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    return parser.parse_args()


def run_all(platform: Platform, args: argparse.Namespace) -> list[Row]:
    rows = []
    for params in args.params:
        for n in args.participants:
            model_file, exact = build_model_file(params, platform.work, f"p{params}n{n}")
            print(f"== P={exact:,} (Input(({INPUT_WIDTH},)) -> Dense, {exact * 4 / MIB:.1f} MiB of "
                  f"float32), N={n}, {args.rounds} rounds", flush=True)
            began = time.monotonic()
            row = bench_combination(platform, model_file, exact, n, args.rounds,
                                    args.serialise_sends)
            model_file.unlink()
            print(f"== done in {time.monotonic() - began:.1f} s: s/round "
                  f"{', '.join(f'{d:.2f}' for d in row.durations)}", flush=True)
            rows.append(row)
    return rows


def main() -> int:
    args = parse_args()
    run = uuid.uuid4().hex[:6]
    database_url = fresh_database(args.admin_url, "musketeer_roundbench")
    work = Path(tempfile.mkdtemp(prefix="musketeer-round-bench-"))
    broker = api = None
    began = time.monotonic()
    ok = False
    try:
        broker = None if args.bootstrap else start_broker(log_path=work / "broker.log")
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        prefix = f"roundbench{run}"
        api = start_api(database_url, bootstrap, work, MUSKETEER_TOPIC_PREFIX=prefix)
        print(f"API {api.url}, broker {bootstrap}, database {database_url.rpartition('/')[2]}; "
              f"P {args.params}, "
              f"N {args.participants}, {args.rounds} rounds; logs in {work}", flush=True)
        rows = run_all(Platform(api.url, bootstrap, prefix, run, work), args)
        ok = True
    except BenchFailed as exc:
        print(f"round bench FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if api:
            api.stop()
        if broker:
            broker.stop()
        drop_database(database_url, args.admin_url)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr, flush=True)
    print_table(rows, args.serialise_sends)
    print(f"(whole bench: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
