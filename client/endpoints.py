"""What the client's endpoint groups need of the HTTP plumbing, and how a task's path is spelt."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import httpx


class Endpoints(Protocol):
    """The plumbing of MusketeerClient that its endpoint groups (keys, training) call."""

    def _get(self, path: str, *, params: dict[str, Any] | None = None, retry: bool = True) -> Any: ...
    def _post(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any: ...
    def _command(self, method: str, path: str, *, key: str | None, **kwargs: Any) -> Any: ...
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...


def task_path(name: str, action: str | None = None) -> str:
    """A task's URL path; a "/" or "?" in a name stays part of the name."""
    path = f"/v1/tasks/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path
