"""`musketeer demo`: the seed's §3.3.1 walk-through in one command, federated training included.

It brings the local platform up (or uses the one running), registers an
aggregator (Alice) and two participants (John, Jack), creates the task, starts
the aggregator and both participant daemons as separate processes, shows each
round as it completes, then prints accuracy per round, the final test accuracy,
the confusion matrix and time per round; it writes a JSON report and a PNG
chart, and shuts down what it started.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from client import ConflictError, MusketeerClient
from client.cli.output import events_table, task_panel, tasks_table
from client.models import Round, Task
from client.profile import Profile
from infra import platform
from infra.daemons import daemon_environment, describe_logs, spawn_musketeer
from infra.demo_report import (
    eval_options,
    final_evaluation,
    final_model,
    matrix_table,
    results_table,
    round_line,
    write_chart,
)
from infra.errors import PlatformError
from schema.dataplane import ModelMeta

DEMO_PASSWORD = "musketeer-demo"


@dataclass(frozen=True)
class Person:
    username: str
    organization: str


ALICE = Person("alice", "IBM")
JOHN = Person("john", "TREE")
JACK = Person("jack", "UCLM")


@dataclass(frozen=True)
class Scenario:
    """A dataset, the task definition that suits it, and each site's share of the data."""

    name: str
    definition: dict[str, Any]
    participant_args: tuple[list[str], list[str]]
    eval_args: list[str]


def scenario(dataset: str, data_dir: Path | None) -> Scenario:
    """The demo's task for `dataset` (digits, mnist or welding)."""
    if dataset == "digits":
        # Digits is small (1,797 images): two sites get a third each, the aggregator the rest.
        definition = {"quorum": 2, "rounds": 5, "epochs": 5, "batch_size": 32,
                      "learning_rate": 0.01, "test_size": 60, "model": "digits-mlp"}
        return Scenario("digits", definition,
                        (["--dataset", "digits", "--shard", "1/3"],
                         ["--dataset", "digits", "--shard", "2/3"]),
                        ["--eval-data", "digits", "--eval-shard", "3/3"])
    if dataset == "mnist":
        source = f"mnist:{data_dir}" if data_dir else "mnist"
        # The seed's own definition and spelling (D3.3 §3.3.1), sized to the sites' shards.
        definition = {"quorum": 2, "round": 5, "epoch": 1, "batch_size": 64,
                      "learning_rate": 0.002, "training_size": 3000, "test_size": 300,
                      "aggregator": "neural_network.Aggregator", "model": "mnist-cnn"}
        return Scenario("mnist", definition,
                        (["--dataset", source, "--shard", "1/3"],
                         ["--dataset", source, "--shard", "2/3"]),
                        ["--eval-data", source, "--eval-shard", "3/3"])
    if dataset == "welding":
        # The seed's budget (§3.4): MLP of 1000 hidden units, Adam, 64 epochs, batch 128;
        # federated as 8 rounds of 8 local epochs. Each robot keeps 200 welds for local tests.
        definition = {"quorum": 2, "rounds": 8, "epochs": 8, "batch_size": 128,
                      "learning_rate": 0.001, "test_size": 200,
                      "model": "welding-mlp", "standardise": True}
        return Scenario("welding", definition,
                        (["--dataset", "welding", "--robot", "FPS2"],
                         ["--dataset", "welding", "--robot", "FPD2"]),
                        ["--eval-data", "welding", "--eval-seed", "7"])
    raise PlatformError(f"unknown demo dataset {dataset!r} (choose digits, mnist or welding)")


def signed_in(api_url: str, person: Person) -> MusketeerClient:
    """A client logged in as `person`, registering them first if they are new."""
    client = MusketeerClient(api_url)
    try:
        client.register(person.username, DEMO_PASSWORD, person.organization)
    except ConflictError:
        pass  # a re-run on the same data folder: the account is already there
    client.login(person.username, DEMO_PASSWORD)
    return client


@dataclass
class Demo:
    """One run of the demo on a running platform."""

    profile: Profile
    scenario: Scenario
    logs_dir: Path
    console: Console
    clients: dict[str, MusketeerClient] = field(default_factory=dict)

    def control_plane(self) -> str:
        """Register, create the task, list, join; return the task's name."""
        self.console.print(Rule("1. register an aggregator and two participants"))
        for person in (ALICE, JOHN, JACK):
            self.clients[person.username] = signed_in(self.profile.api_url, person)
            self.console.print(f"  {person.username} ({person.organization}) is registered "
                               "and logged in")
        alice, john, jack = (self.clients[p.username] for p in (ALICE, JOHN, JACK))
        self.console.print(Rule(f"2. alice creates a task ({self.scenario.name})"))
        name = f"demo-{self.scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.console.print(task_panel(alice.create_task(
            name, self.scenario.definition, description="seed §3.3.1 walk-through")))
        self.console.print(Rule("3. john lists the tasks he could join"))
        self.console.print(tasks_table(john.list_tasks(status="CREATED", limit=5).items))
        self.console.print(Rule("4. john and jack join"))
        for client, person in ((john, JOHN), (jack, JACK)):
            joined = client.join(name)
            self.console.print(f"  {person.username} joined: "
                               f"{joined.participant_count}/{joined.quorum}")
        return name

    def train(self, name: str) -> list[Round]:
        """Start the three daemons as processes and follow the rounds until the task ends."""
        self.console.print(Rule("5. the aggregator and both participants train"))
        processes, logs = self._spawn(name)
        alice = self.clients["alice"]
        shown: set[int] = set()
        rounds_total = int(alice.get_task(name).definition["rounds"])
        try:
            while True:
                for entry in alice.rounds(name):
                    if entry.round not in shown:
                        shown.add(entry.round)
                        self.console.print(round_line(entry, rounds_total))
                status = alice.get_task(name).status
                failed = {k: p.returncode for k, p in processes.items()
                          if p.poll() not in (None, 0)}
                if status in ("COMPLETED", "FAILED") or failed:
                    break
                time.sleep(0.5)
            for process in processes.values():
                process.wait(120)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
        task = alice.get_task(name)
        if task.status != "COMPLETED":
            raise PlatformError(f"training did not complete: task is {task.status}"
                                f"{' (' + task.failure_reason + ')' if task.failure_reason else ''}"
                                f"\n{describe_logs(logs)}")
        return alice.rounds(name)

    def _spawn(self, name: str) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, Path]]:
        bootstrap = self.profile.kafka_bootstrap_servers or ""

        def env(who: str) -> dict[str, str]:
            # Each demo person's signing keys live in the platform folder, as on their own machine.
            return daemon_environment(self.profile.api_url, self.clients[who].token or "",
                                      bootstrap, self.profile.topic_prefix, self.logs_dir.parent / "keys")

        logs = {who: self.logs_dir / f"demo-{who}.log" for who in ("aggregator", "john", "jack")}
        processes = {"aggregator": spawn_musketeer(
            ["aggregate", name, *self.scenario.eval_args, "--round-timeout", "600"],
            env("alice"), logs["aggregator"])}
        for who, args in zip(("john", "jack"), self.scenario.participant_args):
            processes[who] = spawn_musketeer(
                ["participate", name, *args, "--output", str(self.logs_dir.parent / "models" / who)],
                env(who), logs[who])
        self.console.print(f"  aggregator and participants started (logs in {self.logs_dir})")
        return processes, logs


def centralised_comparison(task: Task, model: Any, meta: ModelMeta, chosen: Scenario,
                           console: Console) -> list[dict[str, Any]]:
    """The seed's welding table: the federated model against one trained on pooled data."""
    from infra.demo_compare import compare, comparison_table

    console.print("training the centralised model for comparison (the same model and budget)…")
    rows = compare(model, meta, task.task_id, task.definition,
                   int(eval_options(chosen.eval_args)["--eval-seed"]))
    budget = (f"{meta.model}, Adam, {meta.rounds} rounds × {meta.epochs} epochs = "
              f"{meta.rounds * meta.epochs} epochs, batch {meta.batch_size}")
    console.print(comparison_table(rows, budget))
    return rows


def run_demo(platform_dir: Path, api_port: int, dataset: str = "digits",
             data_dir: Path | None = None, report_dir: Path | None = None,
             console: Console | None = None) -> int:
    """Bring the platform up, run the walk-through with training, bring it down; 0 on success."""
    console = console or Console(highlight=False)
    chosen = scenario(dataset, data_dir)
    report_dir = report_dir or Path.cwd()
    steps = platform.Steps(console)
    profile = platform.running_profile(platform_dir)
    started_here = profile is None
    if profile is None:
        profile, _ = platform.up(platform_dir, api_port, steps)
    try:
        demo = Demo(profile, chosen, platform.paths_for(platform_dir).root / "logs", console)
        name = demo.control_plane()
        rounds = demo.train(name)
        alice = demo.clients["alice"]
        console.print(Rule("6. results"))
        console.print(results_table(rounds))
        final = final_evaluation(alice, name, chosen.eval_args)
        model_path = report_dir / "demo-model.keras"
        model_path.write_bytes(final.pop("keras_file"))
        accuracy = final["accuracy"]
        console.print(matrix_table(final["confusion_matrix"]))
        console.print(f"final test accuracy: [bold]{accuracy:.4f}[/bold] "
                      f"(the .keras file downloaded through the API, sha256 {final['model_sha256'][:16]}…, "
                      f"saved as {model_path})")
        if chosen.name == "welding":
            _, model, meta = final_model(alice, name)
            final["comparison"] = centralised_comparison(alice.get_task(name), model, meta, chosen, console)
        console.print(Rule("7. the task's history, as recorded in the event log"))
        events = alice.task_events(name)
        console.print(events_table(events))
        verdict = alice.verify()
        console.print(f"hash chain over {verdict.events} events: "
                      + ("[green]intact[/green]" if verdict.ok else "[red]BROKEN[/red]"))
        report = {
            "task": name, "dataset": chosen.name, "definition": chosen.definition,
            "rounds": [r.model_dump(mode="json") for r in rounds],
            "final": final,
            "history": [e.type for e in events], "hash_chain_ok": verdict.ok,
        }
        report_path, chart_path = report_dir / "demo-report.json", report_dir / "demo-accuracy.png"
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        write_chart(rounds, chart_path, f"{name}: accuracy per round")
        console.print(f"\n[bold green]demo finished[/bold green]: report {report_path}, "
                      f"chart {chart_path}")
        return 0 if verdict.ok else 1
    finally:
        if started_here:
            platform.down(platform_dir, steps)
