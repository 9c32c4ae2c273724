"""The API's thread pool: its size comes from MUSKETEER_API_THREADS, and a login runs on it."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from anyio import to_thread
from fastapi.testclient import TestClient

from api import security
from api.app import create_app
from api.settings import Settings, SettingsError


def test_the_thread_count_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight by default; a count that is not a positive whole number stops start-up, named."""
    monkeypatch.delenv("MUSKETEER_API_THREADS", raising=False)
    assert Settings.from_env().api_threads == 8
    monkeypatch.setenv("MUSKETEER_API_THREADS", "3")
    assert Settings.from_env().api_threads == 3
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv("MUSKETEER_API_THREADS", bad)
        with pytest.raises(SettingsError, match="MUSKETEER_API_THREADS"):
            Settings.from_env()


@pytest.mark.integration
def test_the_app_sizes_its_pool_and_logs_in_off_the_event_loop(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running app's pool holds api_threads tokens, and argon2 runs in a worker thread, not
    on the event loop every request shares."""
    settings = replace(Settings.from_env(), database_url=database_url, relay_enabled=False,
                       kafka_bootstrap_servers="127.0.0.1:1", api_threads=3)
    checked_in: list[str] = []
    real_check = security.check_password

    def recording_check(stored: str | None, password: str) -> bool:
        checked_in.append(threading.current_thread().name)
        return real_check(stored, password)

    monkeypatch.setattr(security, "check_password", recording_check)
    with TestClient(create_app(settings)) as client:
        assert client.portal is not None
        tokens: Any = client.portal.call(lambda: to_thread.current_default_thread_limiter().total_tokens)
        assert tokens == 3
        loop_thread: str = client.portal.call(lambda: threading.current_thread().name)
        registered = client.post("/v1/users", json={"username": "threads-user", "password": "a-long-password",
                                                   "organization": "org"})
        assert registered.status_code == 201, registered.text
        login = client.post("/v1/auth/token", data={"username": "threads-user", "password": "a-long-password"})
    assert login.status_code == 200, login.text
    assert checked_in and loop_thread not in checked_in
