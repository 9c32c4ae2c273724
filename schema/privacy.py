"""Privacy operation modes (the seed's POMs) the platform implements, and what each requires of a
task definition. A mode the platform does not implement is refused, never stored and ignored.

- POM 1, plain: the aggregator sees each update (optionally with central differential privacy:
  `noise_multiplier` with `clip_norm`, the aggregator clips and adds the noise).
- POM 2, secure aggregation: the aggregator learns only each round's sum of updates.
- POM 3, secure aggregation with distributed differential privacy: on top of POM 2, each
  participant clips its update to `clip_norm` and adds its part of the noise.
"""

from __future__ import annotations

from typing import Any

from schema.algorithms import NEURAL

IMPLEMENTED: dict[int, str] = {
    1: "plain",
    2: "secure aggregation",
    3: "secure aggregation with differential privacy",
}
DEFAULT_DELTA = 1e-5
# Per-coordinate bound on |update - global| under secure aggregation: values beyond are clipped
# so that the sum of quantised values can never wrap around the ring of 2^64.
DEFAULT_SECAGG_BOUND = 100.0


def secure(pom: int) -> bool:
    """Whether the mode hides individual updates from the aggregator."""
    return pom in (2, 3)


def threshold(definition: dict[str, Any], participants: int) -> int:
    """How many members must take part in each step of a secure round (default: a majority)."""
    given = definition.get("secagg_threshold")
    return int(given) if given is not None else participants // 2 + 1


def check(pom: int, definition: Any) -> None:
    """Raise ValueError (naming the field) if the definition cannot run in this privacy mode."""
    if pom not in IMPLEMENTED:
        known = ", ".join(f"{n} ({what})" for n, what in IMPLEMENTED.items())
        raise ValueError(f"privacy mode (pom) {pom} is not implemented; the platform implements {known}")
    noise = definition.noise_multiplier
    if secure(pom):
        _check_secure(pom, definition)
    if noise is not None and definition.clip_norm is None:
        raise ValueError("noise_multiplier needs clip_norm (the bound on each update that the noise covers)")
    if pom == 3 and noise is None:
        raise ValueError("pom 3 needs noise_multiplier (and clip_norm): it adds differential privacy")
    if definition.target_epsilon is not None and noise is None:
        raise ValueError("target_epsilon needs noise_multiplier: without noise there is no budget to spend")


def _check_secure(pom: int, definition: Any) -> None:
    if definition.quorum < 2:
        raise ValueError(f"pom {pom} needs a quorum of at least 2: the sum of one update is that update")
    if definition.algorithm not in NEURAL:
        raise ValueError(f"algorithm '{definition.algorithm}' cannot run with pom {pom}: secure "
                         f"aggregation sums neural-network weights ({', '.join(sorted(NEURAL))}); "
                         "use pom 1 for it")
    if getattr(definition, "contribution", None) is not None:
        raise ValueError(f"contribution values each participant's update; with pom {pom} the "
                         "aggregator sees only their sum (use pom 1 to value contributions)")
    if definition.aggregation != "fedavg":
        raise ValueError(f"aggregation '{definition.aggregation}' needs each update; with pom {pom} the "
                         "aggregator sees only their sum (use fedavg, with clip_norm if you like)")
    if pom == 2 and definition.sample_cap is None:
        raise ValueError("pom 2 needs training_size or max_samples: the sample counts are summed in a "
                         "ring of 2^64, and their bound keeps the sum from wrapping")
    t = definition.secagg_threshold
    if t is not None and not 2 <= t <= definition.quorum:
        raise ValueError(f"secagg_threshold {t} must be between 2 and the quorum ({definition.quorum})")
