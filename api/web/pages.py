"""What the dashboard's task pages show, gathered from the read models and the log."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from api import queries
from api.domain import TaskView
from api.errors import Forbidden
from api.web.chart import Chart, Series, line_chart
from schema.lifecycle import TaskStatus

Conn = psycopg.Connection[Any]
LIVE_STATUSES = (TaskStatus.CREATED, TaskStatus.STARTED)
PAGE_SIZE = 20


@dataclass
class TaskPage:
    """The task page: the task, what the viewer may do, and (for insiders) its progress."""

    task: TaskView
    viewer: str
    insider: bool
    rounds: list[queries.RoundView] = field(default_factory=list)
    events: list[queries.TaskEventView] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    @property
    def is_creator(self) -> bool:
        return self.task.creator == self.viewer

    @property
    def is_member(self) -> bool:
        return any(p.username == self.viewer for p in self.task.participants)

    @property
    def live(self) -> bool:
        """Whether the page should keep refreshing its progress."""
        return self.task.status in LIVE_STATUSES

    @property
    def actions(self) -> list[str]:
        """The buttons this viewer gets: the commands the platform would accept from them."""
        task, created = self.task, self.task.status == TaskStatus.CREATED
        found = []
        if created and not self.is_creator and not self.is_member:
            found.append("join")
        if created and self.is_member:
            found.append("leave")
        if created and self.is_creator and task.participant_count >= task.quorum:
            found.append("start")
        if self.is_creator and task.status in LIVE_STATUSES:
            found.append("delete")
        return found

    @property
    def final_round(self) -> queries.RoundView | None:
        return self.rounds[-1] if self.rounds else None


def task_page(conn: Conn, name: str, viewer: str) -> TaskPage:
    """The task page for `viewer`; progress and history only for its creator and participants."""
    task = queries.get_task(conn, name)
    page = TaskPage(task=task, viewer=viewer, insider=False)
    try:
        page.rounds = queries.task_rounds(conn, name, viewer).items
        page.events = queries.task_events(conn, name, viewer).items
        page.insider = True
    except Forbidden:
        return page
    page.rejections = [{**e.data, "recorded_at": e.recorded_at} for e in page.events
                       if e.type == "UpdateRejected"]
    page.missed = [{**e.data, "recorded_at": e.recorded_at} for e in page.events
                   if e.type == "ParticipantMissedRound"]
    page.charts = round_charts(page.rounds)
    return page


def round_charts(rounds: list[queries.RoundView]) -> list[Chart]:
    """Loss and accuracy per round: the participants' local test average and the held-out set."""
    numbers = [r.round for r in rounds]

    def series(label: str, css: str, source: str, metric: str) -> Series:
        return Series(label, css, [getattr(r, source).get(metric) for r in rounds])

    loss = [series("local test loss", "local", "metrics", "loss"),
            series("held-out loss", "held-out", "eval_metrics", "loss")]
    accuracy = [series("local test accuracy", "local", "metrics", "accuracy"),
                series("held-out accuracy", "held-out", "eval_metrics", "accuracy")]
    return [line_chart("Loss per round", numbers, loss, floor=0.0),
            line_chart("Accuracy per round", numbers, accuracy, floor=0.0, ceiling=1.0)]


def run_commands(task: TaskView) -> dict[str, str]:
    """The exact commands to run the task's daemons, as its creator and as a participant."""
    name = shlex.quote(task.name)
    aggregate = f"musketeer aggregate {name}"
    model = task.definition.get("model")
    if not model:
        aggregate += " --model my-model.keras"
    aggregate += " --eval-data csv:held-out.csv --eval-label-column label"
    participate = f"musketeer participate {name} --dataset csv:my-data.csv --label-column label"
    return {"aggregate": aggregate, "participate": participate}


def list_filters(params: dict[str, str], viewer: str) -> tuple[queries.TaskFilter, dict[str, str]]:
    """The task list's query parameters as a TaskFilter, and the values to show in the form."""
    shown = {key: params.get(key, "").strip() for key in
             ("search", "status", "pom", "creator", "joined", "recent", "cursor")}
    status = TaskStatus(shown["status"]) if shown["status"] in TaskStatus.__members__ else None
    pom = int(shown["pom"]) if shown["pom"].isdigit() and 1 <= int(shown["pom"]) <= 6 else None
    filters = queries.TaskFilter(
        status=status, pom=pom, search=shown["search"][:200] or None,
        creator=shown["creator"][:64] or None, joined=True if shown["joined"] else None,
        created_after=datetime.now(UTC) - timedelta(hours=24) if shown["recent"] else None,
        limit=PAGE_SIZE, cursor=shown["cursor"][:100] or None)
    return filters, shown
