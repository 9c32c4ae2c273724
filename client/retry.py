"""Retries: capped exponential backoff, bounded by the total time spent waiting."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff, bounded by a total time spent waiting between tries."""

    total_wait: float = 10.0
    initial_delay: float = 0.25
    max_delay: float = 2.0

    def delay(self, attempt: int, waited: float, retry_after: float | None = None) -> float | None:
        """Seconds to sleep before retry number `attempt + 1`, or None to give up."""
        remaining = self.total_wait - waited
        if remaining <= 0:
            return None
        backoff = min(self.max_delay, self.initial_delay * 2.0**attempt)
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, remaining)


NO_RETRY = RetryPolicy(total_wait=0.0)


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a Retry-After header asks for, if it gives a number."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
