"""Benchmark the control plane: create-task and join with concurrent clients.

Starts its own broker (unless --bootstrap is given) and API process on a fresh
database of the local PostgreSQL, and prints, for each command, throughput and
p50/p99 latency, next to the raw single-row INSERT rate of the same database.

    .venv/bin/python bench/api_bench.py [--clients 32] [--ops 20] [--client-procs K] [--workers N] [--json FILE]

Each client is one thread holding one keep-alive connection, spoken to with the standard
library's http.client: about 0.3 ms of CPU a request, where httpx spent about 4 ms per join
under 32 threads, so the bench measured its own client as much as the API. With
--client-procs K the clients are spread over K worker processes (each runs its share as
threads; latencies are merged, the wall time runs from the first start to the last finish).
With --json FILE it also writes the rows as a JSON list of objects with the keys operation,
ops_per_s, p50_ms, p99_ms, api_cpu_ms_per_op, db_cpu_ms_per_op and machine_cpu_ms_per_op (to
compare runs before and after a change).

On this kind of machine (client, API, broker and database sharing two cores) the rate is
bounded by CPU, so each API row also shows where the CPU went, per operation, read from /proc
before and after the phase: the API's processes (all its workers: the number a change to the
request path has to move), PostgreSQL's, and the whole machine's (the rest is the clients, the
broker and the kernel; with --client-procs, also the start of the client processes).
Latency follows from the rate: C clients that each wait for their answer keep C requests in
flight, so the mean latency is C / (ops/s).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.apiproc import start_api
from infra.tansu import start_broker
from tests.conftest import drop_database, fresh_database

PASSWORD = "bench-password"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Cpu:
    """CPU seconds spent during a phase: by the API's processes, by PostgreSQL's, by the machine."""

    api: float
    db: float
    machine: float


Row = tuple[str, int, float, list[float], Cpu | None]  # label, count, wall s, latencies, CPU


def summarise(row: Row) -> dict[str, Any]:
    """One table row as the JSON object --json writes."""
    label, count, wall, latencies, cpu = row

    def per_op(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / count * 1000, 2)

    return {"operation": label, "ops_per_s": round(count / wall, 1),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "api_cpu_ms_per_op": per_op(cpu and cpu.api), "db_cpu_ms_per_op": per_op(cpu and cpu.db),
            "machine_cpu_ms_per_op": per_op(cpu and cpu.machine)}


def _processes() -> dict[int, tuple[str, int, float]]:
    """Every process alive now: pid -> (command name, parent pid, CPU seconds used so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) may hold spaces; the fields after its ')' do not.
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text.rpartition(")")[2].split()
        found[int(stat.parent.name)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return found


def tree_cpu_s(pid: int, processes: dict[int, tuple[str, int, float]] | None = None) -> float | None:
    """CPU seconds (user + system) used so far by process `pid` and its descendants alive now
    (in `processes`, read from /proc when not given).

    Linux only (/proc); None elsewhere. The API's uvicorn workers are children of its supervisor.
    """
    processes = _processes() if processes is None else processes
    if pid not in processes:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (_, its_parent, _) in processes.items():
            if its_parent == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(processes[p][2] for p in tree)


def cpu_now(api_pid: int) -> Cpu | None:
    """CPU used so far by the API's tree, by every `postgres` process, and by the whole machine.

    None where /proc is not there. Processes that end during a phase take their time with them,
    so PostgreSQL's figure counts the backends that live through it (the API's pooled ones do).
    """
    processes = _processes()  # one walk of /proc for both figures
    api = tree_cpu_s(api_pid, processes)
    if api is None:
        return None
    db = sum(cpu for name, _, cpu in processes.values() if name == "postgres")
    # The first line of /proc/stat: time in each CPU state since boot, in ticks; idle and iowait
    # are the 4th and 5th.
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return Cpu(api, db, busy)


def cpu_spent(before: Cpu | None, after: Cpu | None) -> Cpu | None:
    """What was spent between two readings."""
    if before is None or after is None:
        return None
    return Cpu(after.api - before.api, after.db - before.db, after.machine - before.machine)


def run_concurrently(clients: int, work: Callable[[int], list[float]],
                     procs: int = 1) -> tuple[list[float], float]:
    """Run work(i) for i < `clients`, all started together; return all latencies and the wall time.

    With procs > 1 the clients are dealt out to that many processes (client i to process
    i % procs), so `work` must pickle (a partial of a module-level function).
    """
    if procs <= 1:
        return _merge([_run_threads(clients, work, range(clients), threading.Barrier(clients))])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(clients)  # every client thread of every process starts at once
    results = ctx.Queue()
    workers = [ctx.Process(target=_client_process, args=(clients, work, range(p, clients, procs),
                                                         barrier, results))
               for p in range(min(procs, clients))]
    for worker in workers:
        worker.start()
    chunks = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    failures = [chunk for chunk in chunks if isinstance(chunk, str)]
    if failures:
        raise RuntimeError(f"a client process failed: {failures[0]}")
    return _merge(chunks)


Chunk = tuple[list[float], float, float]  # latencies, first start, last finish (time.monotonic)


def _merge(chunks: list[Chunk]) -> tuple[list[float], float]:
    # time.monotonic is one system-wide clock on Linux, so starts and ends compare across processes.
    latencies = [lat for chunk in chunks for lat in chunk[0]]
    return latencies, max(c[2] for c in chunks) - min(c[1] for c in chunks)


def _run_threads(clients: int, work: Callable[[int], list[float]], indices: range,
                 barrier: Any) -> Chunk:
    starts: list[float] = []

    def start(i: int) -> list[float]:
        barrier.wait()
        starts.append(time.monotonic())
        return work(i)

    with ThreadPoolExecutor(len(indices)) as pool:
        results = list(pool.map(start, indices))
    return [lat for chunk in results for lat in chunk], min(starts), time.monotonic()


def _client_process(clients: int, work: Callable[[int], list[float]], indices: range,
                    barrier: Any, results: Any) -> None:
    try:
        results.put(_run_threads(clients, work, indices, barrier))
    except Exception as exc:  # reported to the parent, which raises it
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


class Client:
    """One bench client: a keep-alive HTTP/1.1 connection and a bearer token (http.client, so the
    client's own CPU stays small beside the API's)."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        self._headers = {"Authorization": f"Bearer {token}"}

    def timed_post(self, path: str, expect: int, body: Any = None) -> float:
        """POST `body` as JSON (or nothing); the seconds until the whole answer was read."""
        headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        began = time.perf_counter()
        self._connection.request("POST", path, body=payload, headers=headers)
        response = self._connection.getresponse()
        text = response.read()
        elapsed = time.perf_counter() - began
        if response.status != expect:
            raise RuntimeError(f"POST {path}: expected {expect}, got {response.status}: {text[:300]!r}")
        return elapsed

    def close(self) -> None:
        self._connection.close()


def register_all(url: str, count: int, run: str) -> list[tuple[str, str]]:
    users = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(count):
            name = f"bench{run}u{i}"
            http.post("/v1/users", json={"username": name, "password": PASSWORD,
                                         "organization": f"org{i}"}).raise_for_status()
            token = http.post("/v1/auth/token", data={"username": name, "password": PASSWORD})
            users.append((name, token.json()["access_token"]))
    return users


def create_ops(url: str, users: list[tuple[str, str]], run: str, ops: int, i: int) -> list[float]:
    """Client i creates `ops` tasks; their latencies."""
    client = Client(url, users[i][1])
    try:
        return [client.timed_post("/v1/tasks", 201, {
            "name": f"t{run}-{i}-{k}",
            "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp", "max_participants": len(users)}})
            for k in range(ops)]
    finally:
        client.close()


def join_ops(url: str, users: list[tuple[str, str]], run: str, ops: int, i: int) -> list[float]:
    """Client i joins the `ops` tasks of the next user; their latencies."""
    owner = (i + 1) % len(users)
    client = Client(url, users[i][1])
    try:
        return [client.timed_post(f"/v1/tasks/t{run}-{owner}-{k}/join", 200) for k in range(ops)]
    finally:
        client.close()


def bench_api(url: str, clients: int, ops: int, run: str, procs: int = 1,
              api_pid: int | None = None) -> list[Row]:
    users = register_all(url, clients, run)
    rows: list[Row] = []
    phases = [("create task (POST /v1/tasks)", create_ops), ("join (POST /v1/tasks/{name}/join)", join_ops)]
    for label, operation in phases:
        before = cpu_now(api_pid) if api_pid else None
        latencies, wall = run_concurrently(clients, functools.partial(operation, url, users, run, ops), procs)
        after = cpu_now(api_pid) if api_pid else None
        rows.append((label, len(latencies), wall, latencies, cpu_spent(before, after)))
    return rows


def bench_raw_insert(database_url: str, clients: int, ops: int) -> list[Row]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, doc jsonb)")
    rows: list[Row] = []
    for threads in (1, clients):
        def insert(i: int) -> list[float]:
            out = []
            with psycopg.connect(database_url, autocommit=True) as conn:
                for k in range(ops * 5):
                    began = time.perf_counter()
                    conn.execute("INSERT INTO bench_raw (doc) VALUES (%s::jsonb)",
                                 (f'{{"client": {i}, "k": {k}}}',))
                    out.append(time.perf_counter() - began)
            return out

        latencies, wall = run_concurrently(threads, insert)
        rows.append((f"raw single-row INSERT, {threads} conn", len(latencies), wall, latencies, None))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--ops", type=int, default=20, help="operations per client (default 20)")
    parser.add_argument("--client-procs", type=int, default=1, metavar="K",
                        help="spread the clients over K processes (default 1: threads of this one)")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes of the API (default 1)")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL URL allowed to create a scratch database")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting the embedded broker")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:6]
    database_url = fresh_database(args.admin_url, "musketeer_bench")
    name = database_url.rpartition("/")[2]
    logs = Path(tempfile.mkdtemp(prefix="musketeer-bench-"))
    broker = None if args.bootstrap else start_broker(log_path=logs / "broker.log")
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    api = None
    try:
        # Each worker gets its share of the connections, so the total stays one per client.
        pool_size = max(1, -(-args.clients // args.workers))
        api = start_api(database_url, bootstrap, logs, workers=args.workers,
                        MUSKETEER_TOPIC_PREFIX=f"bench{run}", MUSKETEER_DB_POOL_SIZE=str(pool_size))
        print(f"API {api.url}, broker {bootstrap}, database {name}; "
              f"{args.clients} clients x {args.ops} ops in {args.client_procs} client process(es), "
              f"{args.workers} API worker(s)",
              flush=True)
        rows = bench_api(api.url, args.clients, args.ops, run, args.client_procs, api.popen.pid)
        rows += bench_raw_insert(database_url, args.clients, args.ops)
    finally:
        if api:
            api.stop()
        if broker:
            broker.stop()
        drop_database(database_url, args.admin_url)

    table = [summarise(row) for row in rows]
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    header = (f"| {'operation':<38} | {'ops':>5} | {'ops/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} "
              f"| {'API CPU ms/op':>13} | {'DB CPU ms/op':>12} | {'machine CPU ms/op':>17} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for (label, count, *_), summary in zip(rows, table, strict=True):
        cpu = [summary[key] for key in ("api_cpu_ms_per_op", "db_cpu_ms_per_op", "machine_cpu_ms_per_op")]
        shown = ["" if value is None else f"{value:.2f}" for value in cpu]
        print(f"| {label:<38} | {count:>5} | {summary['ops_per_s']:>8.1f} | "
              f"{summary['p50_ms']:>7.1f} | {summary['p99_ms']:>7.1f} | "
              f"{shown[0]:>13} | {shown[1]:>12} | {shown[2]:>17} |")
    print(f"(mean create latency {statistics.mean(rows[0][3]) * 1000:.1f} ms; create includes two "
          "topic creations on the broker)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
