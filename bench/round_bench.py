"""Benchmark federated rounds: seconds per round and the aggregator's memory, by model size and N.

For every (P parameters, N participants) it creates a task (quorum N, --rounds
rounds, 1 epoch), runs the real aggregator (`musketeer aggregate TASK --model
F.keras`) as its own process, and answers every round from N no-op participant
processes (bench/noop_participant.py, no TensorFlow) that send the received
weights back unchanged, signed. It prints seconds per
round and the aggregator's RSS (measured by bench/aggregator_rss.py), to check
that aggregation memory does not grow with N (DESIGN.md: updates are folded
into a running sum as they arrive). --serialise-sends makes the participants
send one at a time, to tell the fold apart from reassembling updates that
arrive interleaved on the one-partition updates topic.

Starts its own broker (unless --bootstrap is given) and API process on a fresh
database of the local PostgreSQL, and removes them at the end.

    .venv/bin/python bench/round_bench.py [--rounds 3] [--params 1000000,10000000]
                                          [--participants 2,8] [--serialise-sends] [--scale S]
                                          [--json FILE]

With the default --scale 1 the participants send the weights back unchanged, so from round 2
on each round's model is the one already stored: it is uploaded, but the database writes
nothing (same digest). Real training stores a new model every round. --scale 2 (exact in
float32) makes every round's model new, so every round pays for storing it, as in training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import MusketeerClient, Task
from client.keys import KeyRing
from client.keys_api import ensure_registered
from infra.apiproc import start_api
from infra.procs import log_tail
from infra.tansu import start_broker
from tests.conftest import drop_database, fresh_database

PASSWORD = "bench-password"
MIB = 1024 * 1024
WRAPPER = Path(__file__).resolve().parent / "aggregator_rss.py"
NOOP = Path(__file__).resolve().parent / "noop_participant.py"
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


@dataclass
class Participants:
    """The no-op participant processes of one task (bench/noop_participant.py), their logs and stats."""

    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    stats: dict[str, Path]

    def failed(self) -> str | None:
        """Why a participant already failed (it exited non-zero), or None."""
        for name, process in self.processes.items():
            if process.poll() not in (None, 0):
                return f"participant {name} exited {process.returncode}:\n{log_tail(self.logs[name], 20)}"
        return None

    def wait(self, timeout_s: float) -> None:
        """Wait for every participant to see the final model and exit 0."""
        for name, process in self.processes.items():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                raise BenchFailed(f"participant {name} never saw the final model") from None
        if problem := self.failed():
            raise BenchFailed(problem)

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process)


def spawn_participants(platform: Platform, task: Task, members: dict[str, str],
                       send_lock: Path | None, scale: float = 1.0) -> Participants:
    """One bench/noop_participant.py process per member ({name: token}): no TensorFlow, signed
    updates, the global weights sent back unchanged or times `scale` (the real participant minus
    the training)."""
    found = Participants({}, {}, {})
    for name, token in members.items():
        found.logs[name] = platform.work / f"participant-{name}.log"
        found.stats[name] = platform.work / f"participant-{name}.json"
        command = [sys.executable, str(NOOP), task.name, "--api", platform.api_url, "--bootstrap",
                   platform.bootstrap, "--keys-dir", str(platform.work / "keys"),
                   "--stats", str(found.stats[name]), "--scale", repr(scale)]
        if send_lock is not None:
            command += ["--send-lock", str(send_lock)]
        with open(found.logs[name], "ab") as out:
            found.processes[name] = subprocess.Popen(
                command, env={**os.environ, "MUSKETEER_TOKEN": token}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return found


# -- users and the task -------------------------------------------------------------


def user(platform: Platform, name: str) -> MusketeerClient:
    """Register and log in `name`."""
    client = MusketeerClient(platform.api_url)
    client.register(name, PASSWORD, f"org-{name}")
    client.login(name, PASSWORD)
    return client


def keyed_user(platform: Platform, name: str) -> MusketeerClient:
    """Register and log in `name` with a signing key of their own (in the bench's keys folder,
    where their participant process finds it)."""
    client = user(platform, name)
    ensure_registered(client, KeyRing(platform.work / "keys", name))
    return client


def create_task(platform: Platform, params: int, n: int, rounds: int
                ) -> tuple[MusketeerClient, Task, dict[str, str]]:
    """A creator, a task with quorum n, and n participants who joined it ({name: token})."""
    tag = f"rb{platform.run}p{params}n{n}"
    creator = user(platform, f"{tag}-creator")
    task = creator.create_task(f"{tag}-task", {"quorum": n, "rounds": rounds, "epochs": 1, "model": "user"})
    tokens: dict[str, str] = {}
    for name in (f"{tag}-p{i}" for i in range(n)):
        client = keyed_user(platform, name)
        client.join(task.name)
        tokens[name] = client.token or ""
    return creator, task, tokens


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
                   participants: Participants, timeout_s: float) -> tuple[float, Path, Path]:
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
            if problem := participants.failed():
                raise BenchFailed(problem)
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
                      rounds: int, serialise: bool, scale: float = 1.0) -> Row:
    """Run one task of `rounds` rounds with n no-op participant processes; its measurements."""
    creator, task, members = create_task(platform, params, n, rounds)
    lock = platform.work / f"send-{task.name}.lock" if serialise else None
    participants = spawn_participants(platform, task, members, lock, scale)
    try:
        timeout_s = 300.0 + rounds * 600.0
        _wall, _log, rss_file = run_aggregator(platform, task, creator.token or "", model_file,
                                               participants, timeout_s)
        participants.wait(60)
    finally:
        participants.stop()
    return measure(creator, task, params, n, rounds, participants, rss_file)


def measure(creator: MusketeerClient, task: Task, params: int, n: int, rounds: int,
            participants: Participants, rss_file: Path) -> Row:
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
    stats = [json.loads(path.read_text()) for path in participants.stats.values()]
    payload = max(s["bytes_sent"] // max(1, len(s["rounds"])) for s in stats)
    return Row(params, n, rounds, durations, cycles, task_s, payload, memory)


# -- the table ------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "n/a"


def memory_mib(row: Row) -> tuple[float | None, float | None, float | None]:
    """The aggregator's RSS added by the rounds, its peak in the rounds and over the whole run (MiB)."""
    m = row.memory
    baseline, in_rounds = m.get("baseline_rss_kib"), m.get("rounds_peak_kib")
    whole = max(m.get("setup_peak_kib", 0), m.get("ru_maxrss_kib", 0), m.get("exit_hwm_kib", 0))
    added = (in_rounds - baseline) / 1024 if baseline and in_rounds else None
    return added, (in_rounds / 1024 if in_rounds else None), (whole / 1024 if whole else None)


def json_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as --json writes them (one object per combination)."""
    objects = []
    for row in rows:
        added, peak, whole = memory_mib(row)
        objects.append({"params": row.params, "participants": row.participants, "rounds": row.rounds,
                        "s_per_round": statistics.mean(row.durations),
                        "s_per_round_max": max(row.durations),
                        "cycle_s": statistics.mean(row.cycles) if row.cycles else None,
                        "task_s": row.task_s, "payload_mib": row.payload_bytes / MIB,
                        "agg_rss_added_mib": added, "agg_peak_rss_mib": peak,
                        "agg_peak_rss_whole_run_mib": whole, "durations": row.durations})
    return objects


def print_table(rows: list[Row], serialised: bool, scale: float = 1.0) -> None:
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
          "updates received and folded, round model uploaded; the upload runs while the next round's "
          "weights go out, so it overlaps the next round). cycle s = time between consecutive "
          "rounds' recorded_at (what a round costs end to end). task s = TaskStarted to TaskCompleted (includes "
          "the aggregator's TensorFlow import and model load, which follow the start). "
          "Participants are no-op processes (bench/noop_participant.py: no training, no TensorFlow; they "
          "verify the broadcast, decode it, re-encode and sign the update). Aggregator RSS: "
          "VmRSS when round 1 begins (TensorFlow loaded, model built, round 1 broadcast), the peak "
          "(VmHWM, reset at that moment) over the rounds, and the process's peak over the whole run.")
    if serialised:
        print("Updates were sent one at a time (--serialise-sends), not concurrently.")
    if scale == 1.0:
        print("Participants sent the weights back unchanged (--scale 1): from round 2 on, the round's "
              "model was already stored, and the database wrote nothing for it; --scale 2 stores one every "
              "round.")
    else:
        print(f"Participants sent the weights times {scale:g} (--scale): every round stored a new model.")


# -- platform set-up and main ----------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def finite_scale(text: str) -> float:
    """--scale: a finite number other than 0 (0 would zero the model, and the NaN check refuses inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be a number, not {text!r}") from None
    if not math.isfinite(value) or value == 0:
        raise argparse.ArgumentTypeError(f"--scale must be a finite number other than 0, not {text!r}")
    return value


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
    parser.add_argument("--scale", type=finite_scale, default=1.0, metavar="S",
                        help="participants send the weights times S (default 1: unchanged, so "
                             "rounds after the first store no new model; 2 makes every round's model "
                             "new, as training does, and stays exact in float32)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL allowed to create a scratch database")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    parser.add_argument("--keep-logs", action="store_true", help="keep the scratch folder (logs, "
                        "participants' timelines) after a successful run")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the rows to FILE as a JSON list (params, participants, "
                             "s_per_round, cycle_s, agg_rss_added_mib, agg_peak_rss_mib, ...)")
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
                                    args.serialise_sends, args.scale)
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
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr, flush=True)
    print_table(rows, args.serialise_sends, args.scale)
    if args.json:
        args.json.write_text(json.dumps(json_rows(rows), indent=1) + "\n")
    print(f"(whole bench: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
