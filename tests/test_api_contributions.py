"""Contribution values through a real API process and PostgreSQL: recorded by the aggregator
after a round, read by insiders, rebuilt from the log; bad definitions refused at creation."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from api.replay import replay
from client import ConflictError, MusketeerClient, PermissionDenied, ValidationFailed
from tests.conftest import ApiProcess, unique
from tests.test_api_training import person, started_task, usernames

pytestmark = pytest.mark.integration


def _recorded_round(alice: MusketeerClient, name: str, who: list[str], round_no: int = 1) -> None:
    model = f"round-{round_no}-weights".encode()
    alice.upload_model(name, model, round=round_no)
    alice.record_round(name, round_no, participants=who, model_sha256=hashlib.sha256(model).hexdigest())


def _values(alice: MusketeerClient, name: str, round_no: int, values: dict[str, float]) -> Any:
    return alice.record_contributions(name, round_no, method="shapley_exact", metric="accuracy",
                                      values=values, baseline=0.5, total=0.8,
                                      data="digits[3/3] (599 samples)")


def test_contributions_are_recorded_after_their_round_and_summed_per_participant(
        api: ApiProcess, database_url: str) -> None:
    """Round by round, creator only, once each; insiders read them with per-participant totals."""
    alice, members, name = started_task(api, rounds=3)
    john, jack = usernames(members)
    with pytest.raises(ConflictError, match="record round 1 before its contributions"):
        _values(alice, name, 1, {john: 0.1, jack: 0.2})
    _recorded_round(alice, name, [john, jack])
    with pytest.raises(PermissionDenied):
        _values(members[0], name, 1, {john: 0.1, jack: 0.2})
    with pytest.raises(ValidationFailed, match="not participants"):
        _values(alice, name, 1, {john: 0.1, "mallory": 0.2})
    _values(alice, name, 1, {john: 0.1, jack: 0.2})
    with pytest.raises(ConflictError, match="already recorded"):
        _values(alice, name, 1, {john: 0.3, jack: 0.0})
    _recorded_round(alice, name, [john, jack], 2)
    _values(alice, name, 2, {john: -0.05, jack: 0.25})

    report = members[1].contributions(name)
    assert [c.round for c in report.items] == [1, 2]
    assert report.items[0].values == {john: 0.1, jack: 0.2} and report.items[0].method == "shapley_exact"
    assert report.items[1].data == "digits[3/3] (599 samples)" and report.items[1].metric == "accuracy"
    assert report.totals == {jack: pytest.approx(0.45), john: pytest.approx(0.05)}
    events = [e for e in alice.task_events(name) if e.type == "ContributionsAssessed"]
    assert [e.data["round"] for e in events] == [1, 2] and events[0].actor == alice.me().username
    with pytest.raises(PermissionDenied):
        person(api).contributions(name)

    rebuilt = replay(database_url)
    assert rebuilt.ok and rebuilt.tables["contributions"].rows_after >= 2


def test_bad_contribution_bodies_are_422s(api: ApiProcess) -> None:
    """Non-finite values, an unknown method, an empty value map: refused naming the field."""
    alice, members, name = started_task(api)
    who = usernames(members)
    _recorded_round(alice, name, who)
    base = {"round": 1, "method": "shapley_exact", "metric": "accuracy", "values": {who[0]: 0.1},
            "baseline": 0.5, "total": 0.6, "data": "eval"}
    headers = {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"}
    for change, words in (({"values": {who[0]: float("nan")}}, "values"),
                          ({"method": "banzhaf"}, "method"), ({"values": {}}, "values"),
                          ({"data": "a\u0000b"}, "NUL")):
        # json.dumps writes NaN as the bare token a careless client would send.
        response = httpx.post(f"{api.url}/v1/tasks/{name}/contributions", headers=headers,
                              content=json.dumps({**base, **change}), timeout=10)
        assert response.status_code == 422, (change, response.text)
        assert words in response.json()["message"], (change, response.json())
    assert alice.contributions(name).items == []


@pytest.mark.parametrize("definition, words", [
    ({"algorithm": "fedadam", "mu": 0.1}, "'mu' applies to fedprox"),
    ({"algorithm": "kmeans"}, "kmeans needs 'clusters'"),
    ({"algorithm": "fedyogi", "beta_2": 2}, "beta_2"),
    ({"contribution": "banzhaf"}, "contribution"),
])
def test_algorithm_mistakes_are_refused_when_the_task_is_created(
        api: ApiProcess, definition: dict[str, Any], words: str) -> None:
    """The API answers 422 with the field named, and no task exists afterwards."""
    alice = person(api)
    name = unique("algo")
    with pytest.raises(ValidationFailed, match=words):
        alice.create_task(name, {"quorum": 1, "rounds": 2, **definition})
    assert not [t for t in alice.iter_tasks(search=name)]
