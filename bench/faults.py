"""Benchmark recovery from faults: how soon rounds resume after a component is killed and restarted.

Runs the task of tests/fault_support.py (4 rounds of digits, two participants and the
aggregator as real processes) once without a fault and once per fault. A fault is
injected as the tests inject it, but later: once round 2 is recorded (round 3 under way)
the component is SIGKILLed, left down for a moment, and started again.

    aggregator   the aggregator daemon (down 1 s)
    participant  john's participant daemon (down 1 s)
    api          the API process, on an API of its own (down 2 s)
    postgres     an embedded PostgreSQL of its own (pgserver, in a tempfile.mkdtemp
                 folder, as tests/test_faults_database.py runs it; down 3 s)
    broker       a broker (and API) of its own, SIGKILLed and restarted empty (tansu keeps
                 nothing), as tests/test_faults_broker.py does (down 1 s)

For each fault it prints the time from the restart to the next recorded round, the
rounds redone (defined under the table), whether every round was recorded exactly
once, and the task's time next to a fault-free run. Daemon logs are followed and
shown, time-stamped, as progress.

Starts its own broker and API process on a fresh database of the local PostgreSQL
(MUSKETEER_TEST_DATABASE_ADMIN_URL, as the tests), and removes them at the end.

    .venv/bin/python bench/faults.py [--repeat 1] [--faults aggregator,participant,api,postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.apiproc import ApiProcess
from infra.postgres import postgres_pid, start_postgres, stop_postgres
from infra.procs import find_free_port
from infra.tansu import start_broker
from schema import migrate
from tests.conftest import drop_database, fresh_database, start_api
from tests.fault_support import ROUNDS, Run, final_accuracy, run_task

FAULTS = ("aggregator", "participant", "api", "postgres", "broker")
UNSUPPORTED: dict[str, str] = {}
PARTICIPANTS = ("john", "jack")
KILLED_PARTICIPANT = "john"
TRAINED = re.compile(r"round (\d+): trained in")
RESUMED = re.compile(r"resuming after round (\d+)")

Inject = Callable[[Run], None]


def now() -> datetime:
    return datetime.now(UTC)


# -- following the daemons' logs ------------------------------------------------------


@dataclass
class Line:
    """A log line and the wall-clock time it was first seen (0.1 s resolution)."""

    at: datetime
    who: str
    text: str


class LogWatcher(threading.Thread):
    """Stamps and prints every line the run's logs gain: the daemons' logs carry no times."""

    def __init__(self, folder: Path, label: str) -> None:
        super().__init__(name=f"logs-{label}", daemon=True)
        self.folder = folder
        self.label = label
        self.lines: list[Line] = []
        self.began = time.monotonic()
        self._offsets: dict[Path, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            self.sweep()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sweep()

    def sweep(self) -> None:
        for path in sorted(self.folder.glob("*.log")):
            for text in self._new_lines(path):
                self._add(Line(now(), _who(path), text))

    def _new_lines(self, path: Path) -> list[str]:
        offset = self._offsets.get(path, 0)
        with open(path, "rb") as log:
            log.seek(offset)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offsets[path] = offset + len(complete)
        return [t.rstrip() for t in complete.decode(errors="replace").splitlines() if t.strip()]

    def _add(self, line: Line) -> None:
        self.lines.append(line)
        print(f"    [{self.label} +{time.monotonic() - self.began:5.1f} s {line.who}] {line.text}",
              flush=True)


def _who(path: Path) -> str:
    # Run logs are "<task>-<who>.log" (tests/fault_support.py); an API's is "api-<port>.log".
    return "api" if path.stem.startswith("api-") else path.stem.rsplit("-", 1)[-1]


# -- the faults -----------------------------------------------------------------------


@dataclass
class Moments:
    """When the fault happened, and in which round."""

    open_round: int = 0
    who: str | None = None
    killed_at: datetime | None = None
    restarted_at: datetime | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Platform:
    """What every run shares: the scratch database, the broker, the shared API and topics."""

    database_url: str
    bootstrap: str
    api: ApiProcess
    prefix: str


def injector(moments: Moments, kill: Callable[[], None], down_s: float,
             restart: Callable[[], object]) -> Inject:
    """A fault: note the open round, kill, stay down `down_s`, restart, note the moment."""

    def inject(run: Run) -> None:
        moments.open_round = run.rounds_done() + 1
        moments.killed_at = now()
        steps = [time.monotonic()]
        kill()
        steps.append(time.monotonic())
        print(f"  killed during round {moments.open_round}", flush=True)
        time.sleep(down_s)
        steps.append(time.monotonic())
        restart()
        # The restart moment: right after the component was started again.
        moments.restarted_at = now()
        steps.append(time.monotonic())
        kill_s, wait_s, start_s = (b - a for a, b in itertools.pairwise(steps))
        moments.notes.append(f"down = kill {kill_s:.1f} s + kept down {wait_s:.1f} s + "
                             f"start {start_s:.1f} s")
        print(f"  restarted after {steps[-1] - steps[0]:.1f} s down ({moments.notes[-1]})",
              flush=True)

    return inject


def daemon_fault(who: str, moments: Moments) -> Callable[[Run], None]:
    """Kill and restart a daemon of the run, as restart_after_kill in tests/fault_support.py."""

    def inject(run: Run) -> None:
        moments.who = who
        injector(moments, lambda: run.kill(who), 1.0, lambda: run.start(who))(run)

    return inject


@contextlib.contextmanager
def setup(fault: str, platform: Platform, tmp: Path,
          moments: Moments) -> Iterator[tuple[ApiProcess, Inject | None]]:
    """The API a run talks to and its fault; own API or database where the fault needs one."""
    if fault in ("baseline", "aggregator", "participant"):
        who = {"aggregator": "aggregator", "participant": KILLED_PARTICIPANT}.get(fault)
        yield platform.api, (daemon_fault(who, moments) if who else None)
    elif fault == "api":
        with own_api(platform.database_url, platform, tmp) as api:
            yield api, injector(moments, api.kill, 2.0, api.restart)
    elif fault == "postgres":
        with embedded_postgres(platform, tmp, moments) as pair:
            yield pair
    elif fault == "broker":
        with own_broker(platform, tmp, moments) as pair:
            yield pair
    else:
        raise ValueError(f"unknown fault {fault!r}")


@contextlib.contextmanager
def own_api(database_url: str, platform: Platform, tmp: Path) -> Iterator[ApiProcess]:
    """An API process of the run's own, stopped at the end."""
    api = start_api(database_url, platform.bootstrap, tmp, platform.prefix)
    try:
        yield api
    finally:
        api.stop()


@contextlib.contextmanager
def embedded_postgres(platform: Platform, tmp: Path,
                      moments: Moments) -> Iterator[tuple[ApiProcess, Inject]]:
    """The embedded PostgreSQL as tests/test_faults_database.py runs it, and its fault."""
    # Not under tmp: as root, the embedded server runs as another user who must enter it.
    root = Path(tempfile.mkdtemp(prefix="musketeer-pgfault-"))
    pgdata = root / "postgres"
    try:
        url, _ = start_postgres(pgdata)
        with psycopg.connect(url, autocommit=True) as conn:
            migrate.apply(conn)
        with own_api(url, platform, tmp) as api:
            # Down 1 + 2 s, the test's two sleeps, without its two requests while down: each
            # waits out the API's 10 s pool timeout, and a longer outage lets the pool's
            # reconnect back-off (1, 2, 4, 8… s) grow, which this bench would then measure.
            yield api, injector(moments, lambda: kill_postgres(pgdata), 3.0,
                                lambda: start_postgres(pgdata))
    finally:
        stop_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def own_broker(platform: Platform, tmp: Path,
               moments: Moments) -> Iterator[tuple[ApiProcess, Inject]]:
    """A broker (and API) of the run's own, SIGKILLed and restarted empty on its port."""
    port = find_free_port()
    holder = {"broker": start_broker(port=port, log_path=tmp / "broker-own.log")}

    def kill() -> None:
        os.kill(holder["broker"].pid, signal.SIGKILL)
        holder["broker"].stop()

    def restart() -> None:
        holder["broker"] = start_broker(port=port, log_path=tmp / "broker-own-2.log")

    try:
        api = start_api(platform.database_url, holder["broker"].bootstrap, tmp, platform.prefix)
        try:
            # Run the task's daemons against this broker, not the shared one.
            yield api, injector(moments, kill, 1.0, restart)
        finally:
            api.stop()
    finally:
        holder["broker"].stop()


def kill_postgres(pgdata: Path) -> None:
    """SIGKILL the postmaster and every backend: a crash, not a shutdown.

    As kill_postgres in tests/test_faults_database.py, without its race: there a backend
    that exits between the listing and its signal raises NoSuchProcess, and one forked
    after the listing would outlive the postmaster, holding the shared memory that the
    restarted server then refuses to share.
    """
    pid = postgres_pid(pgdata)
    if pid is None:
        raise RuntimeError(f"no PostgreSQL runs in {pgdata}")
    server = psutil.Process(pid)
    server.send_signal(signal.SIGSTOP)  # stopped, the postmaster forks no new backend
    backends = server.children(recursive=True)
    for process in [*backends, server]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs([*backends, server], timeout=10)


def kill_leftover_daemons() -> None:
    """After a failed run: SIGKILL the daemons it left running (our children, by pid)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "from infra.cli import main" in " ".join(child.cmdline()):
                child.kill()
                child.wait(10)


# -- measuring a run ----------------------------------------------------------------


@dataclass
class Outcome:
    """What one run measured."""

    fault: str
    task_s: float
    recorded: dict[int, int]
    chain_ok: bool
    accuracy: float
    rejected: int
    down_s: float | None = None
    recovery_s: float | None = None
    next_round: int | None = None
    retrained: list[tuple[str, int, int]] = field(default_factory=list)
    recollected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def redone(self) -> int:
        return len({r for _, r, _ in self.retrained} | set(self.recollected))

    @property
    def once_each(self) -> bool:
        return self.recorded == {r: 1 for r in range(1, ROUNDS + 1)}


def measure(fault: str, run: Run, moments: Moments, lines: list[Line]) -> Outcome:
    """Times and counts from the task's events and the stamped logs."""
    client = run.people["alice"].client
    events = client.task_events(run.name)
    first: dict[str, datetime] = {}
    for event in events:
        if event.recorded_at is not None:
            first.setdefault(event.type, event.recorded_at)
    task_s = (first["TaskCompleted"] - first["TaskStarted"]).total_seconds()
    rounds = [e for e in events if e.type == "RoundCompleted"]
    outcome = Outcome(fault, task_s, dict(Counter(e.data["round"] for e in rounds)),
                      client.verify().ok, final_accuracy(run),
                      sum(1 for e in events if "Reject" in e.type), notes=list(moments.notes))
    if moments.restarted_at is not None and moments.killed_at is not None:
        outcome.down_s = (moments.restarted_at - moments.killed_at).total_seconds()
        after = [(e.recorded_at, e.data["round"]) for e in rounds
                 if e.recorded_at and e.recorded_at > moments.restarted_at]
        if after:
            outcome.recovery_s = (after[0][0] - moments.restarted_at).total_seconds()
            outcome.next_round = after[0][1]
        redone(outcome, moments, lines)
    return outcome


def redone(outcome: Outcome, moments: Moments, lines: list[Line]) -> None:
    """Rounds trained more than once, and rounds a restarted aggregator collected again."""
    for who in PARTICIPANTS:
        trained = Counter(int(m.group(1)) for line in lines if line.who == who
                          for m in [TRAINED.search(line.text)] if m)
        outcome.retrained += [(who, r, n) for r, n in sorted(trained.items()) if n > 1]
    resumed = [int(m.group(1)) for line in lines if line.who == "aggregator"
               for m in [RESUMED.search(line.text)] if m]
    if resumed:
        outcome.recollected = list(range(max(resumed) + 1, moments.open_round + 1))
    if moments.who in PARTICIPANTS:
        outcome.notes.append(cut_short(moments, lines))
    for round_no in outcome.recollected:
        outcome.notes.append(recollected_note(round_no, moments, lines))


def recollected_note(round_no: int, moments: Moments, lines: list[Line]) -> str:
    """How many of the round's updates a resumed aggregator found already sent."""
    # It starts collecting once its checkpoint is restored; updates trained before then
    # answered the killed aggregator's broadcast and are read again from the topic.
    resumed_at = next((line.at for line in lines if line.who == "aggregator"
                       and moments.restarted_at and line.at > moments.restarted_at
                       and "restored the round" in line.text), None)
    found = [line.who for line in lines if line.who in PARTICIPANTS and resumed_at
             and line.at < resumed_at and f"round {round_no}: trained" in line.text]
    return (f"round {round_no}: the restarted aggregator resumed from the checkpoint and "
            f"collected it anew; {len(found)} of {len(PARTICIPANTS)} updates were already on "
            "the updates topic when it resumed (re-read, not retrained)")


def cut_short(moments: Moments, lines: list[Line]) -> str:
    """Whether the killed participant had finished the open round before the kill."""
    round_no, who = moments.open_round, moments.who
    finished = any(line.who == who and moments.killed_at and line.at < moments.killed_at
                   and f"round {round_no}: trained" in line.text for line in lines)
    if finished:
        return f"{who} had sent its round {round_no} update before the kill"
    return (f"{who} had not finished round {round_no} when killed (any training of it was lost); "
            f"the restarted {who} trained round {round_no} from the start")


def run_once(fault: str, platform: Platform, tmp: Path, label: str) -> Outcome:
    """One task with (or, for "baseline", without) the fault; its measurements."""
    tmp.mkdir(parents=True)
    moments = Moments()
    watcher = LogWatcher(tmp, label)
    watcher.start()
    try:
        with setup(fault, platform, tmp, moments) as (api, inject):
            try:
                # The daemons use the broker their API uses (the broker fault has its own).
                bootstrap = api.env.get("KAFKA_BOOTSTRAP_SERVERS", platform.bootstrap)
                run = run_task(api, bootstrap, platform.prefix, tmp, inject, fault_after=2)
            except BaseException:
                kill_leftover_daemons()
                raise
            watcher.stop()
            return measure(fault, run, moments, watcher.lines)
    finally:
        watcher.stop()


# -- the table --------------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> str:
    """The mean, and the range when there are several values."""
    if not values:
        return "–"
    mean = f"{statistics.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def recorded_cell(outcomes: list[Outcome]) -> str:
    if all(o.once_each for o in outcomes):
        chain = "chain ok" if all(o.chain_ok for o in outcomes) else "CHAIN BROKEN"
        return f"yes, 1 × each of {ROUNDS}; {chain}"
    return "NO: " + "; ".join(str(o.recorded) for o in outcomes if not o.once_each)


def redone_cell(outcomes: list[Outcome]) -> str:
    parts = []
    for o in outcomes:
        trained = ", ".join(f"{who} r{r} ×{n}" for who, r, n in o.retrained) or "none"
        collected = ", ".join(f"r{r}" for r in o.recollected) or "none"
        parts.append(f"{o.redone} (re-trained: {trained}; re-collected: {collected})")
    return " / ".join(parts)


def row(name: str, outcomes: list[Outcome], baseline: list[Outcome]) -> list[str]:
    base = [o.task_s for o in baseline]
    extra = [o.task_s - statistics.mean(base) for o in outcomes] if base else []
    return [name, str(len(outcomes)), spread([o.down_s for o in outcomes if o.down_s]),
            spread([o.recovery_s for o in outcomes if o.recovery_s is not None]),
            ", ".join(sorted({str(o.next_round) for o in outcomes})), redone_cell(outcomes),
            recorded_cell(outcomes), spread([o.task_s for o in outcomes]), spread(base),
            spread(extra), spread([o.accuracy for o in outcomes], 3)]


def baseline_row(baseline: list[Outcome]) -> list[str]:
    task_s = spread([o.task_s for o in baseline])
    return ["none (fault-free)", str(len(baseline)), "–", "–", "–", "–", recorded_cell(baseline),
            task_s, task_s, "–", spread([o.accuracy for o in baseline], 3)]


COLUMNS = ["fault", "runs", "down s", "restart → next round s", "next round", "rounds redone",
           "recorded once per round?", "task s", "task s fault-free", "extra s",
           "final eval acc"]


def print_table(results: Results, faults: list[str]) -> None:
    baseline = results.outcomes.get("baseline", [])
    rows = []
    for fault in ["baseline", *faults]:
        outcomes = results.outcomes.get(fault, [])
        cells = (baseline_row(outcomes) if fault == "baseline" else row(fault, outcomes, baseline)
                 ) if outcomes else [fault, "0", *["–"] * (len(COLUMNS) - 2)]
        failed = len(results.failures.get(fault, []))
        if failed:
            cells[1] += f" (+{failed} FAILED)"
        rows.append(cells)
    rows += [[fault, "0", "–", reason, *["–"] * (len(COLUMNS) - 4)]
             for fault, reason in UNSUPPORTED.items()]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print_notes(results, faults)


def print_notes(results: Results, faults: list[str]) -> None:
    print(f"""
The task: {ROUNDS} rounds of digits-mlp, 2 participants (john, jack) and the aggregator as
processes (tests/fault_support.py). The fault is injected once round 2 is recorded: the component
is SIGKILLed in round 3, stays down ("down s", kill to restart moment), and is started again.
restart → next round s = recorded_at of the first RoundCompleted recorded after the restart
moment, minus that moment. The restart moment is the wall-clock time right after the component
was started again: for a daemon, right after its process was spawned (it still has to import
TensorFlow and catch up); for the API, once /healthz answers again; for PostgreSQL, once
`pg_ctl start -w` returned. "next round" is which round that was.
rounds redone = the number of distinct rounds whose work was done again because of the fault:
rounds some participant trained to completion more than once (its "round N: trained" line
appears twice in its log, which spans the killed and the restarted process), plus rounds a
restarted aggregator collected again (it resumed after round R from the checkpoint while round
R+1.. was open at the kill, so it re-broadcast that round and read its updates again from the
updates topic). A training cut short by the kill prints nothing and is not counted.
recorded once per round? = exactly one RoundCompleted event per round 1..{ROUNDS} (a round is
never recorded twice), and GET /v1/audit/verify walks the hash chain without a break.
task s = TaskStarted to TaskCompleted (recorded_at); extra s = task s minus the mean fault-free
task s. Values are means over the runs, with (min–max) when there are several. The fault-free
run uses the shared API on the scratch database of the local PostgreSQL; the postgres fault runs
on an embedded server of its own (pgserver).""")
    for fault in faults:
        for i, outcome in enumerate(results.outcomes.get(fault, []), 1):
            rejected = f"{outcome.rejected} update(s) rejected" if outcome.rejected else ""
            notes = "; ".join(filter(None, [*outcome.notes, rejected]))
            if notes:
                print(f"- {fault} run {i}: {notes}")
    for fault, reasons in results.failures.items():
        for reason in reasons:
            print(f"- {fault}: a run FAILED: {reason}")


# -- main ------------------------------------------------------------------------


def fault_list(text: str) -> list[str]:
    faults = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in faults if f not in FAULTS and f not in UNSUPPORTED]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(FAULTS)}")
    return [f for f in faults if f in FAULTS]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per fault, averaged (default 1)")
    parser.add_argument("--faults", type=fault_list, default=list(FAULTS),
                        help=f"comma-separated, from {','.join(FAULTS)} (default all)")
    return parser.parse_args()


@dataclass
class Results:
    """Every run's measurements, and why the failed runs failed, by fault."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)


def run_all(platform: Platform, work: Path, args: argparse.Namespace) -> Results:
    results = Results()
    for repeat in range(1, args.repeat + 1):
        for fault in ["baseline", *args.faults]:
            label = f"{fault} {repeat}/{args.repeat}"
            print(f"== {label}: {'no fault' if fault == 'baseline' else f'kill {fault}'}",
                  flush=True)
            began = time.monotonic()
            try:
                outcome = run_once(fault, platform, work / f"{fault}-{repeat}", label)
            except Exception as exc:  # one failed run must not hide the others
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                results.failures.setdefault(fault, []).append(reason)
                print(f"== {label}: FAILED after {time.monotonic() - began:.1f} s: {exc}",
                      flush=True)
                continue
            results.outcomes.setdefault(fault, []).append(outcome)
            recovery = (f", restart → round {outcome.next_round} in {outcome.recovery_s:.1f} s"
                        if outcome.recovery_s is not None else "")
            print(f"== {label}: done in {time.monotonic() - began:.1f} s, task "
                  f"{outcome.task_s:.1f} s{recovery}, {outcome.redone} round(s) redone", flush=True)
    return results


def main() -> int:
    args = parse_args()
    # SIGTERM runs the clean-up below too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the daemons inherit it: readable logs
    run = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix="musketeer-fault-bench-"))
    began = time.monotonic()
    database_url = fresh_database()
    broker = api = None
    ok = False
    try:
        broker = start_broker(log_path=work / "broker.log")
        prefix = f"faultbench{run}"
        api = start_api(database_url, broker.bootstrap, work, prefix)
        print(f"API {api.url}, broker {broker.bootstrap}, database "
              f"{database_url.rpartition('/')[2]}; faults {','.join(args.faults)}, "
              f"{args.repeat} run(s) each; logs in {work}", flush=True)
        results = run_all(Platform(database_url, broker.bootstrap, api, prefix), work, args)
        ok = not results.failures
    except Exception as exc:  # reported with the logs kept, after the clean-up
        print(f"fault bench FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if api:
            api.stop()
        if broker:
            broker.stop()
        drop_database(database_url)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr, flush=True)
    print_table(results, args.faults)
    print(f"(whole bench: {time.monotonic() - began:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
