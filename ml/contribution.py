"""What each participant's data was worth: leave-one-out and Shapley values over a utility.

The utility v(S) of a coalition S of participants is the quality (accuracy, R²) on held-out
data of the model built from S's updates alone; v(∅) is the model the round started from.

- Leave-one-out: v(N) − v(N \\ {i}), what the round loses without i.
- Shapley: i's marginal contribution v(S ∪ {i}) − v(S) averaged over every order in which the
  participants could join. Exact (every subset, 2^N utilities) for N ≤ 6; above that, truncated
  Monte-Carlo (Ghorbani & Zou, "Data Shapley", ICML 2019): random orders, and once a prefix is
  within `tolerance` of v(N) (relative to v(N) − v(∅)) the rest of that order adds nothing, so
  its utilities are not computed.

Utilities are cached per coalition: a coalition's model is built and scored once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import factorial

import numpy as np

Utility = Callable[[frozenset[str]], float]
EXACT_UP_TO = 6
TRUNCATION_TOLERANCE = 0.01


@dataclass(frozen=True)
class Valuation:
    """Each participant's value, how it was computed, and the utilities at both ends."""

    values: dict[str, float]
    method: str              # "leave_one_out", "shapley_exact" or "shapley_monte_carlo"
    baseline: float          # v(∅): the model the round started from
    total: float             # v(N): everyone's updates together
    evaluations: int         # coalitions whose model was built and scored
    permutations: int | None = None


class _Cached:
    """A utility that computes each coalition once."""

    def __init__(self, utility: Utility) -> None:
        self.utility = utility
        self.known: dict[frozenset[str], float] = {}

    def __call__(self, coalition: frozenset[str]) -> float:
        if coalition not in self.known:
            self.known[coalition] = float(self.utility(coalition))
        return self.known[coalition]


def leave_one_out(players: Sequence[str], utility: Utility) -> Valuation:
    """v(N) − v(N \\ {i}) for every participant i."""
    v = _Cached(utility)
    everyone = frozenset(players)
    values = {p: v(everyone) - v(everyone - {p}) for p in players}
    return Valuation(values, "leave_one_out", v(frozenset()), v(everyone), len(v.known))


def exact_shapley(players: Sequence[str], utility: Utility) -> Valuation:
    """Shapley values from every subset: Σ_S |S|!(n−|S|−1)!/n! · (v(S ∪ {i}) − v(S))."""
    v = _Cached(utility)
    n = len(players)
    values = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for size in range(n):
            weight = factorial(size) * factorial(n - size - 1) / factorial(n)
            for subset in combinations(others, size):
                coalition = frozenset(subset)
                total += weight * (v(coalition | {p}) - v(coalition))
        values[p] = total
    return Valuation(values, "shapley_exact", v(frozenset()), v(frozenset(players)), len(v.known))


def monte_carlo_shapley(players: Sequence[str], utility: Utility, permutations: int, seed: int,
                        tolerance: float = TRUNCATION_TOLERANCE) -> Valuation:
    """Truncated Monte-Carlo Shapley values over `permutations` random orders (seeded)."""
    v = _Cached(utility)
    rng = np.random.default_rng(seed)
    baseline, total = v(frozenset()), v(frozenset(players))
    close_enough = tolerance * abs(total - baseline)
    sums = dict.fromkeys(players, 0.0)
    for _ in range(permutations):
        order = [players[i] for i in rng.permutation(len(players))]
        coalition: frozenset[str] = frozenset()
        previous = baseline
        for p in order:
            if abs(total - previous) <= close_enough:
                break  # truncated: the rest of this order adds (almost) nothing
            coalition = coalition | {p}
            current = v(coalition)
            sums[p] += current - previous
            previous = current
    values = {p: sums[p] / permutations for p in players}
    return Valuation(values, "shapley_monte_carlo", baseline, total, len(v.known), permutations)


def shapley(players: Sequence[str], utility: Utility, permutations: int, seed: int) -> Valuation:
    """Exact Shapley values for up to six participants, truncated Monte-Carlo beyond."""
    if len(players) <= EXACT_UP_TO:
        return exact_shapley(players, utility)
    return monte_carlo_shapley(players, utility, permutations, seed)


def assess(method: str, players: Sequence[str], utility: Utility, permutations: int,
           seed: int) -> Valuation:
    """The valuation a task's `contribution` setting names."""
    if method == "leave_one_out":
        return leave_one_out(players, utility)
    if method == "shapley":
        return shapley(players, utility, permutations, seed)
    raise ValueError(f"unknown contribution method {method!r}")
