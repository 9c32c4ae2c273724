"""Poisoning: one of five members sends a poisoned update every round; how each aggregation copes.

For each aggregation rule (fedavg, median, trimmed_mean, fedavg + clip_norm) the bench trains the
same seeded digits task twice on a platform of its own (fresh database, its own broker and API):
once with five honest participants, once with four honest participants and an attacker. Honest
participants are the real daemon (separate processes, each with a fifth of the digits it may
use); the attacker is a member with a registered key who, for every round, signs and sends the
global weights multiplied by -100 (sign-flipped and scaled x100) with an honest-looking sample
count. The aggregator evaluates each round on held-out digits. Prints a markdown table.

    .venv/bin/python bench/poisoning.py [--rounds 5] [--rules fedavg,median,trimmed_mean,clip]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from infra.apiproc import ApiProcess, start_api
from infra.tansu import start_broker
from schema import dataplane
from schema.dataplane import UpdateMeta
from streams.codec import bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.reader import PayloadReader, Received
from streams.signing import Signer
from streams.writer import PayloadWriter
from tests.conftest import drop_database, fresh_database, unique
from tests.training_support import Member, daemon_env, member, spawn, wait_all

RULES: dict[str, dict[str, Any]] = {
    "fedavg": {"aggregation": "fedavg"},
    "median": {"aggregation": "median"},
    "trimmed_mean": {"aggregation": "trimmed_mean", "trim": 0.2},
    "clip": {"aggregation": "fedavg", "clip_norm": 5.0},
}
LABELS = {"fedavg": "fedavg", "median": "median", "trimmed_mean": "trimmed_mean (trim 0.2)",
          "clip": "fedavg + clip_norm 5"}
SITES = 5  # participants; the data is cut in SITES + 1 shards, the last held out for evaluation


@dataclass
class Outcome:
    accuracy: float
    seconds_per_round: float
    rejected: int


class Attacker(threading.Thread):
    """A member who answers every round with -100 x the global weights, properly signed."""

    def __init__(self, bootstrap: str, who: Member, task: Any, rounds: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.who, self.task, self.rounds = bootstrap, who, task, rounds
        self.sent: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            writer = PayloadWriter(self.bootstrap, signer=Signer(self.who.register_key()))
            with PayloadReader(self.bootstrap, [str(self.task.topics.broadcast)]) as broadcasts:
                deadline = time.monotonic() + 900
                while len(self.sent) < self.rounds and time.monotonic() < deadline:
                    for delivery in broadcasts.poll(0.5):
                        if isinstance(delivery, Received) and delivery.payload.kind == dataplane.WEIGHTS \
                                and delivery.payload.round not in self.sent:
                            self.poison(writer, delivery.payload.round, delivery.payload.data)
        except BaseException as exc:  # reported by the bench
            self.error = exc

    def poison(self, writer: PayloadWriter, round_no: int, data: bytes) -> None:
        weights = [np.asarray(w) * np.float32(-100) for w in bundle_to_weights(decode_bundle(data))]
        meta = UpdateMeta(samples=240, test_samples=0, metrics={})
        writer.send(str(self.task.topics.updates), task_id=self.task.task_id, round=round_no,
                    kind=dataplane.UPDATE, sender=self.who.name,
                    payload=encode_bundle(keras_weights_to_bundle(weights, meta.model_dump())))
        self.sent.append(round_no)


def run_task(api: ApiProcess, bootstrap: str, prefix: str, work: Path, rule: str, attacked: bool,
             rounds: int) -> Outcome:
    """Train one task to the end; its final held-out accuracy and mean seconds per round."""
    alice = member(api, "alice")
    sites = [member(api, f"site{i}") for i in range(SITES)]
    name = unique(f"poison-{rule}")
    definition = {"quorum": SITES, "rounds": rounds, "epochs": 5, "batch_size": 32, "learning_rate": 0.01,
                  "model": "digits-mlp", "seed": 7, **RULES[rule]}
    alice.client.create_task(name, definition)
    for site in sites:
        site.client.join(name)
    if attacked:
        sites[-1].register_key()  # the attacker's daemon never runs: its key must exist for the start
    logs = {"aggregator": work / f"{name}-aggregator.log"}
    processes = {"aggregator": spawn(["aggregate", name, "--eval-data", "digits", "--eval-shard",
                                      f"{SITES + 1}/{SITES + 1}", "--round-timeout", "600"],
                                     daemon_env(api, alice, bootstrap, prefix), logs["aggregator"])}
    honest = sites[:-1] if attacked else sites
    for index, site in enumerate(honest, start=1):
        logs[site.name] = work / f"{name}-{site.name}.log"
        processes[site.name] = spawn(["participate", name, "--dataset", "digits", "--shard",
                                      f"{index}/{SITES + 1}", "--output", str(work / site.name)],
                                     daemon_env(api, site, bootstrap, prefix), logs[site.name])
    attacker = None
    if attacked:
        while alice.client.get_task(name).status != "STARTED":
            time.sleep(0.2)
        attacker = Attacker(bootstrap, sites[-1], alice.client.get_task(name), rounds)
        attacker.start()
    wait_all(processes, logs, timeout_s=1200)
    if attacker is not None:
        attacker.join(30)
        if attacker.error is not None:
            raise RuntimeError(f"the attacker failed: {attacker.error}")
    recorded = alice.client.rounds(name)
    rejected = sum(1 for e in alice.client.task_events(name) if e.type == "UpdateRejected")
    return Outcome(recorded[-1].eval_metrics["accuracy"],
                   statistics.mean(r.duration_s or 0.0 for r in recorded), rejected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per task (default 5)")
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    args = parser.parse_args()
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown or args.rounds < 1:
        parser.error(f"unknown rule(s) {unknown}" if unknown else "--rounds must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="musketeer-poisoning-"))
    database_url = fresh_database()
    broker = start_broker(log_path=work / "broker.log")
    api = start_api(database_url, broker.bootstrap, work, MUSKETEER_TOPIC_PREFIX="poisonbench")
    rows = []
    try:
        for rule in rules:
            clean = run_task(api, broker.bootstrap, "poisonbench", work, rule, False, args.rounds)
            poisoned = run_task(api, broker.bootstrap, "poisonbench", work, rule, True, args.rounds)
            rows.append((rule, clean, poisoned))
            print(f"{rule}: clean {clean.accuracy:.4f}, attacked {poisoned.accuracy:.4f}", flush=True)
    finally:
        api.stop()
        broker.stop()
        drop_database(database_url)
    print(f"\n{SITES} participants (digits, {args.rounds} rounds, seeded); the attacker sends "
          "-100 x the global weights every round, signed with its own member key.\n")
    print("| aggregation | clean accuracy | attacked accuracy | s/round clean | s/round attacked |")
    print("|---|---|---|---|---|")
    for rule, clean, poisoned in rows:
        print(f"| {LABELS[rule]} | {clean.accuracy:.4f} | {poisoned.accuracy:.4f} | "
              f"{clean.seconds_per_round:.2f} | {poisoned.seconds_per_round:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
