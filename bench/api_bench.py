"""Benchmark the control plane: create-task and join with concurrent clients.

Starts its own broker (unless --bootstrap is given) and API process on a fresh
database of the local PostgreSQL, and prints, for each command, throughput and
p50/p99 latency, next to the raw single-row INSERT rate of the same database.

    .venv/bin/python bench/api_bench.py [--clients 32] [--ops 20] [--client-procs K] [--workers N] [--json FILE]

With --client-procs K the clients are spread over K worker processes (each runs its
share as threads; latencies are merged, the wall time runs from the first start to the
last finish), so one Python process's HTTP client does not cap the rate it measures.
With --json FILE it also writes the rows as a JSON list of objects with the keys
operation, ops_per_s, p50_ms, p99_ms and api_cpu_ms_per_op (to compare runs before and after
a change).

On this kind of machine (client, API, broker and database sharing two cores) the rate is
bounded by CPU, so each API row also shows the CPU time the API's processes (all its
workers) spent per operation, read from /proc before and after the phase: the number a
change to the request path has to move. Latency follows from the rate: C clients that each
wait for their answer keep C requests in flight, so the mean latency is C / (ops/s).
"""

from __future__ import annotations

import argparse
import functools
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
from pathlib import Path
from typing import Any

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


Row = tuple[str, int, float, list[float], float | None]  # label, count, wall s, latencies, API CPU s


def summarise(row: Row) -> dict[str, Any]:
    """One table row as the JSON object --json writes."""
    label, count, wall, latencies, cpu_s = row
    return {"operation": label, "ops_per_s": round(count / wall, 1),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "api_cpu_ms_per_op": None if cpu_s is None else round(cpu_s / count * 1000, 2)}


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process `pid` and its descendants alive now.

    Linux only (/proc); None elsewhere. The API's uvicorn workers are children of its supervisor.
    """
    proc = Path("/proc")
    if not (proc / str(pid) / "stat").exists():
        return None
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces; the fields after its ')' do not.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


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


def timed(call: Callable[[], httpx.Response], expect: int) -> float:
    began = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - began
    if response.status_code != expect:
        raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
    return elapsed


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
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {users[i][1]}"}) as http:
        return [timed(lambda k=k: http.post("/v1/tasks", json={
            "name": f"t{run}-{i}-{k}",
            "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp",
                           "max_participants": len(users)}}), 201)
            for k in range(ops)]


def join_ops(url: str, users: list[tuple[str, str]], run: str, ops: int, i: int) -> list[float]:
    """Client i joins the `ops` tasks of the next user; their latencies."""
    owner = (i + 1) % len(users)
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {users[i][1]}"}) as http:
        return [timed(lambda k=k: http.post(f"/v1/tasks/t{run}-{owner}-{k}/join"), 200)
                for k in range(ops)]


def bench_api(url: str, clients: int, ops: int, run: str, procs: int = 1,
              api_pid: int | None = None) -> list[Row]:
    users = register_all(url, clients, run)
    rows: list[Row] = []
    phases = [("create task (POST /v1/tasks)", create_ops), ("join (POST /v1/tasks/{name}/join)", join_ops)]
    for label, operation in phases:
        cpu_before = tree_cpu_s(api_pid) if api_pid else None
        latencies, wall = run_concurrently(clients, functools.partial(operation, url, users, run, ops), procs)
        cpu_after = tree_cpu_s(api_pid) if api_pid else None
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        rows.append((label, len(latencies), wall, latencies, cpu))
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
              f"| {'API CPU ms/op':>13} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for (label, count, *_), summary in zip(rows, table, strict=True):
        cpu = summary["api_cpu_ms_per_op"]
        print(f"| {label:<38} | {count:>5} | {summary['ops_per_s']:>8.1f} | "
              f"{summary['p50_ms']:>7.1f} | {summary['p99_ms']:>7.1f} | "
              f"{'' if cpu is None else f'{cpu:.2f}':>13} |")
    print(f"(mean create latency {statistics.mean(rows[0][3]) * 1000:.1f} ms; create includes two "
          "topic creations on the broker)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
