"""Prometheus metrics of one API process, served at `/metrics`.

Counters are per process (Prometheus sums them across instances); the gauges that describe
the whole platform (active tasks, relay lag) are read from PostgreSQL at scrape time, so every
API process reports the same, true value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schema.events import RecordedEvent, RoundCompleted, UpdateRejected

log = logging.getLogger("musketeer.api")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_COMMAND_METHODS = frozenset({"POST", "PUT", "DELETE"})

# Rejection reasons are free text naming senders and rounds; a metric label must come from a
# small fixed set, so each reason is filed under the first of these its text matches.
_REJECTION_KINDS: tuple[tuple[str, str], ...] = (
    ("duplicate", r"duplicate"),
    ("stale_round", r"stale"),
    ("future_round", r"future round"),
    ("unknown_sender", r"unknown sender|not a participant"),
    ("other_task", r"another task"),
    ("wrong_kind", r"unexpected message kind"),
    ("signature", r"signature|signed|key"),
    ("wrong_shape", r"shape|dtype|layers|arrays"),
    ("non_finite", r"non-finite|nan|inf"),
    ("corrupt", r"corrupt|checksum|sha256|undecodable|malformed|incomplete|frame|chunk"),
)


def rejection_kind(reason: str) -> str:
    """The fixed label a free-text rejection reason is counted under ("other" if none fits)."""
    lowered = reason.lower()
    for kind, pattern in _REJECTION_KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def rejection_kinds() -> list[str]:
    """Every label `rejection_kind` can give."""
    return [kind for kind, _ in _REJECTION_KINDS] + ["other"]


Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class Metrics:
    """The process's metrics registry and the hooks that feed it."""

    def __init__(self, connection: Connect | None = None) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "musketeer_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.commands = Counter("musketeer_commands", "Commands received, by command and outcome",
                                ["command", "outcome"], registry=self.registry)
        self.events = Counter("musketeer_events_appended", "Events appended to the log, by type",
                              ["type"], registry=self.registry)
        self.rounds = Counter("musketeer_rounds_completed", "Federated rounds recorded",
                              registry=self.registry)
        self.rejections = Counter("musketeer_updates_rejected", "Updates refused, by reason",
                                  ["reason"], registry=self.registry)
        for kind in rejection_kinds():  # every label present from the start, at 0
            self.rejections.labels(kind)
        if connection is not None:
            self.registry.register(PlatformGauges(connection))

    def appended(self, records: Iterable[RecordedEvent]) -> None:
        """Count events just committed (called after the append transaction commits)."""
        for record in records:
            self.events.labels(record.type).inc()
            if record.type == RoundCompleted.type_name():
                self.rounds.inc()
            elif record.type == UpdateRejected.type_name():
                self.rejections.labels(rejection_kind(str(record.data.get("reason", "")))).inc()

    def observe(self, request: Request, status: int, seconds: float) -> None:
        """Record one request: latency by route template; commands by name and outcome."""
        route = request.scope.get("route")
        template = str(getattr(route, "path", "unmatched"))
        self.latency.labels(request.method, template, f"{status // 100}xx").observe(seconds)
        if request.method in _COMMAND_METHODS and template.startswith("/v1/") and route is not None:
            outcome = "ok" if status < 400 else str(status)
            self.commands.labels(str(getattr(route, "name", template)), outcome).inc()

    def render(self) -> Response:
        """The registry in Prometheus' text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


class PlatformGauges(Collector):
    """Gauges read from PostgreSQL when scraped: active tasks by status, relay lag in events."""

    def __init__(self, connection: Connect) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        try:
            with self.connection() as conn:
                active = conn.execute(
                    "SELECT status, count(*) AS n FROM tasks WHERE status IN ('CREATED', 'STARTED')"
                    " GROUP BY status").fetchall()
                lag = conn.execute(
                    "SELECT coalesce((SELECT max(position) FROM events), 0)"
                    " - coalesce((SELECT max(position) FROM relay_state), 0) AS lag").fetchone()
        except Exception as exc:  # a scrape must answer even while the database is down
            log.warning("metrics: cannot read the platform gauges: %s", exc)
            return
        tasks = GaugeMetricFamily("musketeer_active_tasks", "Tasks not yet ended, by status",
                                  labels=["status"])
        counts = {row["status"]: int(row["n"]) for row in active}
        for status in ("CREATED", "STARTED"):
            tasks.add_metric([status], counts.get(status, 0))
        yield tasks
        yield GaugeMetricFamily("musketeer_relay_lag_events",
                                "Committed events not yet relayed to Kafka",
                                value=max(int(lag["lag"]) if lag else 0, 0))
