"""The embedded PostgreSQL and the local platform's up / status / down, for real."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from rich.console import Console

from infra import platform
from infra.errors import PlatformError
from infra.postgres import (
    configured_port,
    postgres_pid,
    postgres_running,
    start_postgres,
    stop_postgres,
)
from infra.procs import find_free_port, pid_alive, port_in_use, wait_for_exit

pytestmark = pytest.mark.integration
QUIET = platform.Steps(Console(quiet=True))


def _public_dir() -> Path:
    # Not pytest's tmp_path: as root, postgres runs as the `pgserver` user,
    # which must traverse the folder, and every pytest session resets
    # /tmp/pytest-of-root to mode 0700 (another session may start meanwhile).
    return Path(tempfile.mkdtemp(prefix="musketeer-test-"))


@pytest.fixture(scope="module")
def pgdata() -> Iterator[Path]:
    """One embedded server for the module (initdb is the slow part), stopped at the end."""
    root = _public_dir()
    start_postgres(root / "postgres")
    yield root / "postgres"
    stop_postgres(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A platform data folder of this test's own, removed afterwards."""
    root = _public_dir()
    yield root
    if postgres_running(root / "postgres"):
        stop_postgres(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS: `up` starts the embedded services."""
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def _write(url: str) -> str:
    value = uuid.uuid4().hex
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (value text)")
        conn.execute("INSERT INTO kept VALUES (%s)", (value,))
    return value


def _values(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT value FROM kept")}


# --- embedded PostgreSQL --------------------------------------------------


def test_start_gives_a_psycopg_url_to_the_musketeer_database(pgdata: Path) -> None:
    """The URL connects with psycopg, to a database named musketeer, on 127.0.0.1."""
    url, pid = start_postgres(pgdata)

    with psycopg.connect(url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()

    assert name == ("musketeer",)
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert postgres_running(pgdata) and postgres_pid(pgdata) == pid


def test_start_when_running_returns_the_same_server(pgdata: Path) -> None:
    """Starting twice is harmless: same URL, same pid."""
    first = start_postgres(pgdata)

    assert start_postgres(pgdata) == first


def test_data_survives_stop_and_start(pgdata: Path) -> None:
    """Stop then start keeps the rows and the URL (the fault tests rely on it)."""
    url, _ = start_postgres(pgdata)
    value = _write(url)

    assert stop_postgres(pgdata) is True
    assert not postgres_running(pgdata)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    again, _ = start_postgres(pgdata)

    assert again == url
    assert value in _values(url)


def test_stop_is_idempotent(pgdata: Path) -> None:
    """Stopping a stopped server reports False and changes nothing."""
    start_postgres(pgdata)

    assert stop_postgres(pgdata) is True
    assert stop_postgres(pgdata) is False
    start_postgres(pgdata)


def test_a_killed_server_restarts_with_its_data(pgdata: Path) -> None:
    """After SIGKILL (a crash), start recovers: stale postmaster.pid, committed rows kept."""
    url, pid = start_postgres(pgdata)
    value = _write(url)

    os.kill(pid, signal.SIGKILL)
    assert wait_for_exit(pid, 10)
    assert not postgres_running(pgdata)
    _, new_pid = start_postgres(pgdata)

    assert new_pid != pid
    assert value in _values(url)


def test_start_refuses_when_its_port_is_taken(pgdata: Path) -> None:
    """Someone else on the configured port: a clear error naming it, nothing started."""
    stop_postgres(pgdata)
    port = configured_port(pgdata)
    with socket.socket() as squatter:
        # REUSEADDR: the server's own closed connections leave the port in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

        with pytest.raises(PlatformError, match=f"port {port}"):
            start_postgres(pgdata)

    assert not postgres_running(pgdata)
    start_postgres(pgdata)


# --- platform up / status / down ------------------------------------------


def test_up_status_down(data_dir: Path, clean_env: None) -> None:
    """up starts all three (the API as two workers) and writes the profile; status sees them;
    down stops them, workers included, twice."""
    port = find_free_port()

    profile, _ = platform.up(data_dir, api_port=port, steps=QUIET, api_workers=2)
    try:
        rows = platform.status(data_dir)
        assert platform.running_profile(data_dir) == profile
        workers = [child.pid for child in psutil.Process(profile.pids["api"]).children()
                   if any("spawn_main" in part for part in child.cmdline())]
    finally:
        stopped = platform.down(data_dir, QUIET)

    assert [row.up for row in rows] == [True, True, True]
    assert len(workers) == 2
    assert set(profile.pids) == {"api", "broker", "postgres"}
    assert sorted(stopped) == ["api", "broker", "postgres"]
    assert not any(pid_alive(pid) for pid in [*profile.pids.values(), *workers])
    assert platform.down(data_dir, QUIET) == []
    assert (data_dir / "logs" / "api.log").exists()


def test_up_refuses_a_taken_api_port_before_starting_anything(
    data_dir: Path, clean_env: None
) -> None:
    """The API port in use: an error naming it, and no service was started."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(PlatformError, match=f"port {port}"):
            platform.up(data_dir, api_port=port, steps=QUIET)

    assert not (data_dir / "postgres").exists()
    assert not (data_dir / "profile.json").exists()


def test_failed_api_stops_what_was_started(data_dir: Path, clean_env: None) -> None:
    """An API that cannot start: the error points at its log; database and broker are stopped."""
    port = find_free_port()

    with pytest.raises(PlatformError, match="api.log"):
        platform.up(data_dir, api_port=port, steps=QUIET, api_app="no_such_module:create_app")

    broker_port = int(re.findall(r"listening on: tcp://127.0.0.1:(\d+)",
                                 (data_dir / "logs" / "broker.log").read_text())[-1])
    assert not postgres_running(data_dir / "postgres")
    assert not port_in_use("127.0.0.1", broker_port)
    assert not port_in_use("127.0.0.1", port)
    assert not (data_dir / "profile.json").exists()
