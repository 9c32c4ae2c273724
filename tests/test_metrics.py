"""`/metrics` in Prometheus' format, and the daemons' JSON log lines."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from api.metrics import rejection_kind
from client import ConflictError
from client.daemonlog import DaemonLog, log_round
from tests.conftest import ApiProcess, unique
from tests.training_support import member


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition text (0 if absent)."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_rejection_reasons_are_filed_under_a_few_fixed_labels() -> None:
    """The aggregator's reasons (free text naming people and rounds) map to bounded labels."""
    cases = {
        "duplicate update from bob for round 3": "duplicate",
        "stale update for round 1 (now round 2)": "stale_round",
        "update for future round 9 (now round 2)": "future_round",
        "unknown sender 'mallory' (not a participant of this task)": "unknown_sender",
        "layer 2 has shape (3, 4), expected (4, 4)": "wrong_shape",
        "non-finite values in layer 0": "non_finite",
        "undecodable payload: bad manifest": "corrupt",
        "something new": "other",
    }
    assert {reason: rejection_kind(reason) for reason in cases} == cases


def test_json_log_has_one_object_per_round(capsys: pytest.CaptureFixture[str]) -> None:
    """In JSON mode progress and rounds are one parseable object per line; text mode prints prose."""
    log = DaemonLog("aggregator", "json")
    log("waiting for the quorum")
    log_round(log, "round 1/3 …", task="t", round=1, eval_metrics={"accuracy": 0.9})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["message"] == "waiting for the quorum" and lines[0]["daemon"] == "aggregator"
    assert {k: lines[1][k] for k in ("event", "task", "round", "eval_metrics")} == {
        "event": "round", "task": "t", "round": 1, "eval_metrics": {"accuracy": 0.9}}
    shown: list[str] = []
    log_round(DaemonLog("participant", "text", shown.append), "round 1 trained", round=1)
    assert shown == ["round 1 trained"]


@pytest.mark.integration
def test_metrics_count_requests_commands_events_and_tasks(api: ApiProcess) -> None:
    """After a registration, a task and a refused duplicate, /metrics shows each of them."""
    before = httpx.get(f"{api.url}/metrics", timeout=10).text
    alice = member(api, "metrics")
    name = unique("t")
    alice.client.create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    with pytest.raises(ConflictError):
        alice.client.create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    response = httpx.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(metric: str, **labels: str) -> float:
        return sample(after, metric, **labels) - sample(before, metric, **labels)

    assert grew("musketeer_events_appended_total", type="UserRegistered") == 1
    assert grew("musketeer_events_appended_total", type="TaskCreated") == 1
    assert grew("musketeer_commands_total", command="create_task", outcome="ok") == 1
    assert grew("musketeer_commands_total", command="create_task", outcome="409") == 1
    assert grew("musketeer_http_request_duration_seconds_count", method="POST", route="/v1/tasks",
                status="2xx") == 1
    assert sample(after, "musketeer_active_tasks", status="CREATED") >= 1
    assert "musketeer_relay_lag_events" in after and "musketeer_rounds_completed_total" in after


@pytest.mark.integration
def test_rejected_updates_are_counted_by_reason(api: ApiProcess) -> None:
    """An UpdateRejected recorded by the aggregator shows under its reason's label."""
    alice, bob = member(api, "metrics"), member(api, "bob")
    name = unique("t")
    alice.client.create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    bob.client.join(name)
    alice.register_key()
    bob.register_key()  # a task starts once every member has a signing key
    alice.client.start_task(name)
    before = httpx.get(f"{api.url}/metrics", timeout=10).text
    assert 'musketeer_updates_rejected_total{reason="duplicate"}' in before  # present at 0
    alice.client.reject_update(name, 1, bob.name, f"duplicate update from {bob.name} for round 1")
    after = httpx.get(f"{api.url}/metrics", timeout=10).text
    grew = (sample(after, "musketeer_updates_rejected_total", reason="duplicate")
            - sample(before, "musketeer_updates_rejected_total", reason="duplicate"))
    assert grew == 1
    assert sample(after, "musketeer_active_tasks", status="STARTED") >= 1
