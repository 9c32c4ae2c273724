"""Contribution values through the API: the aggregator records them, insiders read them.

`MusketeerClient` takes these calls from `ContributionCalls`, so `client.contributions(name)`
works in a notebook like every other call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from pydantic import Field

from client.endpoints import task_path
from client.models import Task, _ApiModel


class Contribution(_ApiModel):
    """One round's valuation of every participant's update."""

    round: int
    method: str
    metric: str
    values: dict[str, float] = Field(default_factory=dict)
    baseline: float | None = None
    total: float | None = None
    data: str | None = None
    permutations: int | None = None
    recorded_at: datetime | None = None


class ContributionReport(_ApiModel):
    """Every valued round of a task, and each participant's values summed over them."""

    items: list[Contribution] = Field(default_factory=list)
    totals: dict[str, float] = Field(default_factory=dict)


class _Transport(Protocol):
    def _get(self, path: str, *, params: dict[str, Any] | None = None, retry: bool = True) -> Any: ...
    def _post(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any: ...


class ContributionCalls:
    """The contribution calls of the API client."""

    def record_contributions(self: _Transport, name: str, round: int, *, method: str, metric: str,
                             values: dict[str, float], baseline: float, total: float, data: str,
                             permutations: int | None = None) -> Task:
        """Record what each participant's update was worth to a recorded round (creator only)."""
        body = {"round": round, "method": method, "metric": metric, "values": values,
                "baseline": baseline, "total": total, "data": data, "permutations": permutations}
        return Task.model_validate(self._post(task_path(name, "contributions"), json=body))

    def contributions(self: _Transport, name: str) -> ContributionReport:
        """The task's contribution values per round and summed per participant."""
        return ContributionReport.model_validate(self._get(task_path(name, "contributions")))
