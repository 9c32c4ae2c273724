"""The read side of contribution values: what each participant's updates were worth, per round."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel, Field

from api.queries import require_insider

Conn = psycopg.Connection[Any]


class ContributionView(BaseModel):
    """One round's valuation of every participant's update."""

    round: int
    method: str = Field(description="leave_one_out, shapley_exact or shapley_monte_carlo")
    metric: str = Field(description="what the values are measured in (accuracy, r2)")
    values: dict[str, float]
    baseline: float = Field(description="the metric of the model the round started from")
    total: float = Field(description="the metric with every participant's update")
    data: str = Field(description="the evaluation data the aggregator used")
    permutations: int | None = None
    recorded_at: datetime


class Contributions(BaseModel):
    """Every valued round of a task, and each participant's values summed over them."""

    items: list[ContributionView]
    totals: dict[str, float]


def task_contributions(conn: Conn, name: str, viewer: str) -> Contributions:
    """The task's contribution values, for its creator and participants."""
    task_id = require_insider(conn, name, viewer)
    rows = conn.execute("SELECT * FROM contributions WHERE task_id = %s ORDER BY round", (task_id,))
    items = [ContributionView(values=row["contributions"], **{k: v for k, v in row.items()
                                                              if k not in ("task_id", "contributions")})
             for row in rows.fetchall()]
    totals: dict[str, float] = {}
    for item in items:
        for who, value in item.values.items():
            totals[who] = totals.get(who, 0.0) + value
    return Contributions(items=items, totals=dict(sorted(totals.items())))
