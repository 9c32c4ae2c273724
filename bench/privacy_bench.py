"""What each privacy mode costs, and what differential privacy does to accuracy.

Cost (default): for POM 1, 2 and 3 at --params parameters with 2, 4 and 8 participants, each a
process of its own (bench/noop_participant.py: no training, no TensorFlow), the real aggregator
runs --rounds rounds; prints seconds per round (the aggregator's recorded duration) and the bytes
each participant sent per round (updates, and under POM 2/3 its keys, shares and reveals).

Accuracy (--accuracy): MNIST with the seed's CNN, --sites real participant daemons, POM 3 at noise
multipliers chosen so that the task ends at epsilon of about 1, 3 and 8 (delta 1e-5), beside POM 1
with no noise; prints the held-out accuracy after --rounds rounds.

Both start their own broker and API on a fresh database of the local PostgreSQL.

    .venv/bin/python bench/privacy_bench.py [--params 1000000] [--participants 2,4,8] [--rounds 3]
    .venv/bin/python bench/privacy_bench.py --accuracy [--rounds 5] [--sites 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from infra.apiproc import ApiProcess, start_api
from infra.tansu import start_broker
from ml.secagg.dp import epsilon
from tests.conftest import drop_database, fresh_database, unique
from tests.training_support import daemon_env, member, spawn, wait_all

BENCH = Path(__file__).resolve().parent
PREFIX = "privbench"
MNIST = BENCH.parent.parent / "shared" / "data" / "mnist"
POM_DEFINITION: dict[int, dict[str, Any]] = {
    1: {},
    2: {"training_size": 100},
    3: {"training_size": 100, "clip_norm": 1.0, "noise_multiplier": 1.0},
}


@contextmanager
def platform(work: Path) -> Iterator[tuple[ApiProcess, str]]:
    """A fresh database, broker and API for the bench; all removed at the end."""
    database_url = fresh_database()
    broker = start_broker(log_path=work / "broker.log")
    api = start_api(database_url, broker.bootstrap, work, MUSKETEER_TOPIC_PREFIX=PREFIX)
    try:
        yield api, broker.bootstrap
    finally:
        api.stop()
        broker.stop()
        drop_database(database_url)


def cost_row(api: ApiProcess, bootstrap: str, work: Path, pom: int, n: int, params: int, rounds: int) -> str:
    """One task with n no-op participant processes; its seconds per round and bytes per participant."""
    import round_bench  # the bench's own model builder (TensorFlow loads in this process only)

    alice = member(api, "alice")
    sites = [member(api, f"site{i}") for i in range(n)]
    name = unique(f"cost-p{pom}-n{n}")
    alice.client.create_task(name, {"quorum": n, "rounds": rounds, "model": "user", **POM_DEFINITION[pom]}, pom=pom)
    for site in sites:
        site.client.join(name)
    model, _ = round_bench.build_model_file(params, work, name)
    logs = {"aggregator": work / f"{name}-aggregator.log"}
    processes = {"aggregator": spawn(["aggregate", name, "--model", str(model), "--round-timeout", "600"],
                                     daemon_env(api, alice, bootstrap, PREFIX), logs["aggregator"])}
    for site in sites:
        logs[site.name] = work / f"{name}-{site.name}.log"
        with open(logs[site.name], "ab") as out:
            processes[site.name] = subprocess.Popen(
                [sys.executable, str(BENCH / "noop_participant.py"), name, "--api", api.url, "--bootstrap",
                 bootstrap, "--keys-dir", str(site.keys_dir), "--stats", str(work / f"{name}-{site.name}.json")],
                env={**os.environ, "MUSKETEER_TOKEN": site.client.token or ""}, stdout=out, stderr=subprocess.STDOUT)
    wait_all(processes, logs, timeout_s=1800)
    recorded = alice.client.rounds(name)
    sent = [json.loads((work / f"{name}-{s.name}.json").read_text())["bytes_sent"] for s in sites]
    per_round = statistics.mean(sent) / rounds / 2**20
    seconds = statistics.mean(r.duration_s or 0.0 for r in recorded)
    return f"| {pom} | {n} | {params:,} | {seconds:.2f} | {per_round:.2f} |"


def noise_for(target: float, rounds: int, delta: float = 1e-5) -> float:
    """The noise multiplier that spends `target` epsilon in `rounds` rounds (bisection)."""
    low, high = 0.3, 200.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon(middle, rounds, delta) < target else (middle, high)
    return high


def accuracy_row(api: ApiProcess, bootstrap: str, work: Path, label: str, pom: int, extra: dict[str, Any],
                 sites: int, rounds: int) -> str:
    """One MNIST task with real daemons; its final held-out accuracy and epsilon."""
    alice, people = member(api, "alice"), [member(api, f"site{i}") for i in range(sites)]
    name = unique("acc-" + "".join(c if c.isalnum() else "-" for c in label))
    definition = {"quorum": sites, "rounds": rounds, "epochs": 1, "batch_size": 64, "learning_rate": 0.002,
                  "model": "mnist-cnn", "training_size": 1500, "seed": 11, **extra}
    alice.client.create_task(name, definition, pom=pom)
    for person in people:
        person.client.join(name)
    source, parts = f"mnist:{MNIST}", sites + 1
    logs = {"aggregator": work / f"{name}-aggregator.log"}
    processes = {"aggregator": spawn(["aggregate", name, "--eval-data", source, "--eval-shard", f"{parts}/{parts}",
                                      "--round-timeout", "900"], daemon_env(api, alice, bootstrap, PREFIX),
                                     logs["aggregator"])}
    for index, person in enumerate(people, start=1):
        logs[person.name] = work / f"{name}-{person.name}.log"
        processes[person.name] = spawn(["participate", name, "--dataset", source, "--shard", f"{index}/{parts}",
                                        "--output", str(work / person.name)],
                                       daemon_env(api, person, bootstrap, PREFIX), logs[person.name])
    wait_all(processes, logs, timeout_s=3600)
    last = alice.client.rounds(name)[-1]
    spent = "-" if last.epsilon is None else f"{last.epsilon:.2f}"
    noise = extra.get("noise_multiplier")
    shown = "-" if noise is None else f"{noise:.2f}"
    return f"| {label} | {pom} | {shown} | {spent} | {last.eval_metrics['accuracy']:.4f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true", help="the MNIST accuracy table instead of the cost one")
    parser.add_argument("--params", type=int, default=1_000_000, help="model parameters (cost table)")
    parser.add_argument("--participants", default="2,4,8", help="participant counts (cost table)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per task (default 3; 5 for --accuracy)")
    parser.add_argument("--sites", type=int, default=4, help="participants (accuracy table)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="musketeer-privacy-"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.monotonic()
    with platform(work) as (api, bootstrap):
        if args.accuracy:
            print("| run | pom | noise multiplier | epsilon (delta 1e-5) | held-out accuracy |")
            print("|---|---|---|---|---|")
            print(accuracy_row(api, bootstrap, work, "no DP", 1, {}, args.sites, args.rounds), flush=True)
            for target in (8.0, 3.0, 1.0):
                noise = noise_for(target, args.rounds)
                extra = {"clip_norm": 1.0, "noise_multiplier": round(noise, 4)}
                print(accuracy_row(api, bootstrap, work, f"epsilon ~{target:g}", 3, extra, args.sites, args.rounds),
                      flush=True)
        else:
            print("| pom | participants | params | s/round | MiB sent per participant per round |")
            print("|---|---|---|---|---|")
            for n in (int(x) for x in args.participants.split(",")):
                for pom in (1, 2, 3):
                    print(cost_row(api, bootstrap, work, pom, n, args.params, args.rounds), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"(whole bench: {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
