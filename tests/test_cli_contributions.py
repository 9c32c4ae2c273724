"""How the CLI shows contribution values: participants by total, a column per recent round."""

from __future__ import annotations

from rich.console import Console

from client.cli.contributions import ROUNDS_SHOWN, contributions_table
from client.contributions import Contribution, ContributionReport


def _render(report: ContributionReport) -> str:
    console = Console(width=200, record=True)
    console.print(contributions_table(report))
    return console.export_text()


def test_the_table_ranks_participants_by_total_and_names_method_metric_and_data() -> None:
    """Highest total first; each round's values signed; the caption says how they were valued."""
    items = [Contribution(round=r, method="shapley_exact", metric="accuracy", data="digits[4/4] (449 samples)",
                          values={"alice": 0.1 * r, "dave": -0.2}) for r in (1, 2)]
    text = _render(ContributionReport(items=items, totals={"alice": 0.3, "dave": -0.4}))
    assert text.index("alice") < text.index("dave")
    for expected in ("+0.3000", "-0.4000", "+0.2000", "round 2", "shapley_exact on accuracy",
                     "digits[4/4] (449 samples)", "2 round(s) valued"):
        assert expected in text, text


def test_a_long_task_shows_its_last_rounds_and_says_so() -> None:
    """With more rounds than fit, the last ones are columns and the caption says how many."""
    items = [Contribution(round=r, method="leave_one_out", metric="r2", data="welding",
                          values={"fps2": 0.01}) for r in range(1, ROUNDS_SHOWN + 4)]
    text = _render(ContributionReport(items=items, totals={"fps2": 0.01 * len(items)}))
    assert "round 1 " not in text and f"round {ROUNDS_SHOWN + 3}" in text
    assert f"the last {ROUNDS_SHOWN} shown" in text
