"""A typed Python client of the Musketeer HTTP API (v1), for notebooks, the CLI and daemons.

with MusketeerClient.from_profile() as client:
    for task in client.iter_tasks(status="CREATED"):
        print(task.name, task.participant_count)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from client.contributions import ContributionCalls
from client.credentials import pick_token, same_url
from client.endpoints import task_path as _task_path
from client.errors import ServerError, error_from_response, unreachable
from client.keys_api import KeysApi
from client.models import (
    Task,
    TaskEvent,
    TaskPage,
    TaskState,
    Token,
    User,
    VerifyReport,
)
from client.profile import Profile, describe_profile
from client.retry import NO_RETRY, RetryPolicy, retry_after
from client.training_api import TrainingApi

USER_AGENT = "musketeer-client/0.1"


class MusketeerClient(KeysApi, TrainingApi, ContributionCalls):
    """A synchronous client of the Musketeer HTTP API v1."""

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.api_url = same_url(api_url)
        self.token = token
        # Where the token and the address came from: errors say what to do about them.
        self.token_source: str | None = None
        self.origin: str | None = None
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        # Daemons pass a callback so a long wait says what it waits for.
        self.on_wait = on_wait
        self._http = httpx.Client(
            base_url=self.api_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"MusketeerClient({self.api_url!r}, authenticated={self.token is not None})"

    @classmethod
    def from_profile(
        cls, *, api_url: str | None = None, profile: Profile | None = None, **kwargs: Any
    ) -> MusketeerClient:
        """A client for the platform in the profile, with the token `credentials.pick_token` picks."""
        profile = profile or Profile.load()
        url = same_url(api_url or profile.api_url)
        token, source = pick_token(profile.credentials_path(), url)
        client = cls(url, token, **kwargs)
        client.token_source = source
        # Said when the API cannot be reached: a missing profile is the usual reason.
        client.origin = None if api_url else describe_profile()
        return client

    # -- lifecycle

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def __enter__(self) -> MusketeerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- users and auth

    def register(
        self, username: str, password: str, organization: str, *, idempotency_key: str | None = None
    ) -> User:
        """Create a user account."""
        body = {"username": username, "password": password, "organization": organization}
        return User.model_validate(self._post("/v1/users", json=body, key=idempotency_key))

    def login(self, username: str, password: str) -> Token:
        """Exchange a username and password for a bearer token, and use it from now on."""
        form = {"username": username, "password": password}
        token = Token.model_validate(self._post("/v1/auth/token", data=form))
        self.token = token.access_token
        return token

    def me(self) -> User:
        """The user the token belongs to."""
        return User.model_validate(self._get("/v1/users/me"))

    # -- tasks

    def create_task(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        topology: str = "STAR",
        pom: int = 1,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create a federated task; the definition is sent as given (the server normalises it)."""
        body: dict[str, Any] = {
            "name": name,
            "definition": definition,
            "topology": topology,
            "pom": pom,
        }
        if description is not None:
            body["description"] = description
        return Task.model_validate(self._post("/v1/tasks", json=body, key=idempotency_key))

    def list_tasks(
        self,
        *,
        status: str | None = None,
        pom: int | None = None,
        search: str | None = None,
        creator: str | None = None,
        joined: bool | None = None,
        created_after: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks matching the filters, newest first."""
        params = _task_filters(status, pom, search, creator, joined, created_after, limit, cursor)
        return TaskPage.model_validate(self._get("/v1/tasks", params=params))

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        """Every task matching the filters (same as `list_tasks`), following cursors."""
        cursor: str | None = filters.pop("cursor", None)
        seen: set[str] = set()
        while True:
            page = self.list_tasks(cursor=cursor, **filters)
            yield from page.items
            if not page.next_cursor:
                return
            # A server bug returning the same cursor again would loop forever.
            if page.next_cursor in seen:
                raise ServerError("the server returned the same cursor twice", code="cursor_loop")
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    def get_task(self, name: str) -> Task:
        """One task by name."""
        return Task.model_validate(self._get(_task_path(name)))

    def join(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Join a task as a participant."""
        return Task.model_validate(self._post(_task_path(name, "join"), key=idempotency_key))

    def leave(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Leave a task."""
        return Task.model_validate(self._post(_task_path(name, "leave"), key=idempotency_key))

    def delete_task(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Delete a task (creator only); returns it with status DELETED."""
        body = self._command("DELETE", _task_path(name), key=idempotency_key)
        return Task.model_validate(body)

    def task_events(self, name: str) -> list[TaskEvent]:
        """The task's events, oldest first."""
        body = self._get(_task_path(name, "events"))
        return [TaskEvent.model_validate(item) for item in body.get("items", [])]

    def task_state(self, name: str, version: int) -> TaskState:
        """The task as it was after its first `version` events."""
        body = self._get(_task_path(name, "state"), params={"version": version})
        return TaskState.model_validate(body)

    # -- audit and health

    def verify(self) -> VerifyReport:
        """Walk the event log's hash chain on the server."""
        return VerifyReport.model_validate(self._get("/v1/audit/verify"))

    def health(self) -> dict[str, Any]:
        """Liveness of the API process."""
        body: dict[str, Any] = self._get("/healthz", retry=False)
        return body

    def ready(self) -> dict[str, Any]:
        """Readiness of the API (database, broker); raises ServiceUnavailable if not ready."""
        # No retry: a readiness probe should answer about now, not in ten seconds.
        body: dict[str, Any] = self._get("/readyz", retry=False)
        return body

    # -- plumbing

    def _get(self, path: str, *, params: dict[str, Any] | None = None, retry: bool = True) -> Any:
        policy = self.retry if retry else NO_RETRY
        return self._json(self._send("GET", path, policy=policy, params=params))

    def _post(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        return self._command("POST", path, key=key, **kwargs)

    def _command(self, method: str, path: str, *, key: str | None, **kwargs: Any) -> Any:
        # A fresh key per call makes our own retries safe: the server returns the
        # first result for a repeated key and appends nothing.
        headers = {**kwargs.pop("headers", {}), "Idempotency-Key": key or str(uuid.uuid4())}
        return self._json(self._send(method, path, headers=headers, **kwargs))

    def _send(
        self, method: str, path: str, *, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying only where a repeat cannot apply a command twice."""
        policy = policy or self.retry
        headers = {**kwargs.pop("headers", {}), **self._auth_headers()}
        idempotent = is_idempotent(method, headers)
        attempt, waited = 0, 0.0
        while True:
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                # A refused connection never reached the server, so any request may
                # be repeated; a read failure may have, so only idempotent ones.
                safe = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                delay = policy.delay(attempt, waited) if safe else None
                if delay is None:
                    raise unreachable(self.api_url, exc, self.origin) from exc
                why = f"cannot reach it ({type(exc).__name__})"
            else:
                if response.status_code != 503 or not idempotent:
                    return response
                delay = policy.delay(attempt, waited, retry_after(response))
                if delay is None:
                    return response
                why = f"it is unavailable: {_message_of(response)}"
            if self.on_wait is not None:
                self.on_wait(f"waiting for the API at {self.api_url} ({method} {path}): {why}; "
                             f"retrying in {delay:.1f} s ({waited:.0f} of "
                             f"{policy.total_wait:.0f} s waited)")
            self._sleep(delay)
            attempt, waited = attempt + 1, waited + delay

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_from_response(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            return {"status": response.text.strip()}


def _message_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.status_code))
    except (ValueError, AttributeError):
        return str(response.status_code)


def is_idempotent(method: str, headers: dict[str, str]) -> bool:
    """Whether sending the request twice has the effect of sending it once."""
    return method in ("GET", "HEAD") or "Idempotency-Key" in headers


def _task_filters(
    status: str | None,
    pom: int | None,
    search: str | None,
    creator: str | None,
    joined: bool | None,
    created_after: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, Any]:
    if isinstance(created_after, datetime):
        created_after = created_after.isoformat()
    params: dict[str, Any] = {
        "status": status,
        "pom": pom,
        "search": search,
        "creator": creator,
        "joined": None if joined is None else str(joined).lower(),
        "created_after": created_after,
        "limit": limit,
        "cursor": cursor,
    }
    return {k: v for k, v in params.items() if v is not None}
