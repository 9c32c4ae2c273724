"""`musketeer demo`: the seed's §3.3.1 control-plane walk-through, on the local platform.

It brings the platform up (or uses the one already running), registers an
aggregator (Alice) and two participants (John, Jack), creates a task with the
seed's own definition, lists tasks, joins twice, shows the task's history,
verifies the hash chain, and shuts down what it started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from api.cli_output import events_table, task_panel, tasks_table
from api.client import ConflictError, MusketeerClient
from api.profile import Profile
from infra import platform

# The seed's definition, in the seed's own spelling (D3.3 §3.3.1); the API normalises it.
SEED_DEFINITION = {
    "quorum": 2, "round": 5, "epoch": 2, "batch_size": 128, "learning_rate": 0.001,
    "training_size": 4000, "test_size": 1000, "aggregator": "neural_network.Aggregator",
}
DEMO_PASSWORD = "musketeer-demo"


@dataclass(frozen=True)
class Person:
    username: str
    organization: str


ALICE = Person("alice", "IBM")
JOHN = Person("john", "TREE")
JACK = Person("jack", "UCLM")


def signed_in(api_url: str, person: Person) -> MusketeerClient:
    """A client logged in as `person`, registering them first if they are new."""
    client = MusketeerClient(api_url)
    try:
        client.register(person.username, DEMO_PASSWORD, person.organization)
    except ConflictError:
        pass  # a re-run on the same data folder: the account is already there
    client.login(person.username, DEMO_PASSWORD)
    return client


def walk_through(profile: Profile, console: Console) -> str:
    """The control-plane steps; returns the task's name."""
    console.print(Rule("1. register an aggregator and two participants"))
    alice, john, jack = (signed_in(profile.api_url, p) for p in (ALICE, JOHN, JACK))
    for person in (ALICE, JOHN, JACK):
        console.print(f"  {person.username} ({person.organization}) is registered and logged in")

    console.print(Rule("2. alice creates a task with the seed's definition"))
    name = f"demo-task-{time.strftime('%Y%m%d-%H%M%S')}"
    task = alice.create_task(name, SEED_DEFINITION, description="seed §3.3.1 walk-through")
    console.print(task_panel(task))

    console.print(Rule("3. john lists the tasks he could join"))
    console.print(tasks_table(john.list_tasks(status="CREATED", limit=10).items))

    console.print(Rule("4. john and jack join"))
    for client, person in ((john, JOHN), (jack, JACK)):
        joined = client.join(name)
        console.print(f"  {person.username} joined: {joined.participant_count}/{joined.quorum}")

    console.print(Rule("5. the task's history, as recorded in the event log"))
    console.print(events_table(alice.task_events(name)))
    report = alice.verify()
    verdict = "[green]intact[/green]" if report.ok else f"[red]broken at {report.first_bad_position}[/red]"
    console.print(f"hash chain over {report.events} events: {verdict}")
    if not report.ok:
        raise RuntimeError(f"the event log failed verification at {report.first_bad_position}")
    return name


def run_demo(data_dir: Path, api_port: int, console: Console | None = None) -> int:
    """Bring the platform up, walk through the steps, bring it down again; 0 on success."""
    console = console or Console(highlight=False)
    steps = platform.Steps(console)
    profile = platform.running_profile(data_dir)
    started_here = profile is None
    if profile is None:
        profile, _ = platform.up(data_dir, api_port, steps)
    try:
        name = walk_through(profile, console)
        console.print(
            f"\n[bold green]demo finished[/bold green]: task [bold]{name}[/bold]. Its history stays "
            f"in {data_dir}: `musketeer platform up`, `musketeer login alice` (password "
            f"{DEMO_PASSWORD}), then `musketeer tasks history {name}`."
        )
        return 0
    finally:
        if started_here:
            platform.down(data_dir, steps)
