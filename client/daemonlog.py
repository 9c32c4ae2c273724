"""How the daemons report progress: readable lines, or one JSON object per line (`--log-format json`).

In JSON mode every line is an object with `ts`, `daemon` and either `message` (progress) or
`event: "round"` with the round's numbers, so a log shipper can index rounds without parsing prose.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
Progress = Callable[[str], None]


class DaemonLog:
    """A progress callable for a daemon; `round` reports one completed round."""

    def __init__(self, daemon: str, log_format: LogFormat = "text",
                 text: Progress | None = None) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        self.daemon = daemon
        self.log_format = log_format
        self._text = text or print

    def __call__(self, message: str) -> None:
        """A progress line."""
        if self.log_format == "json":
            self._json({"level": "info", "message": message})
        else:
            self._text(message)

    def round(self, text: str, **fields: Any) -> None:
        """One completed round: `text` in text mode, the fields as one JSON object otherwise."""
        if self.log_format == "json":
            self._json({"event": "round", **fields})
        else:
            self._text(text)

    def _json(self, record: dict[str, Any]) -> None:
        line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "daemon": self.daemon, **record}
        # Plain stdout, flushed: a JSON line must never be wrapped or styled by a console.
        sys.stdout.write(json.dumps(line, default=str) + "\n")
        sys.stdout.flush()


def log_round(progress: Progress, text: str, **fields: Any) -> None:
    """Report a completed round through `progress`, structured when it is a DaemonLog."""
    if isinstance(progress, DaemonLog):
        progress.round(text, **fields)
    else:
        progress(text)
