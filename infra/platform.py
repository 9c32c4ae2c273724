"""The local platform: embedded PostgreSQL, embedded broker and the API, started and stopped as one.

`up` starts what the environment does not already provide (`DATABASE_URL`,
`KAFKA_BOOTSTRAP_SERVERS` point at real servers instead), applies the
migrations, starts the API and writes `<data-dir>/profile.json`; `down` stops
what `up` started. Every service logs to `<data-dir>/logs/<service>.log`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psycopg
from rich.console import Console

from api.settings import Settings
from client.profile import Profile
from infra.apiproc import api_environment, healthy, spawn_api, wait_healthy
from infra.errors import PlatformError
from infra.postgres import postgres_running, start_postgres, stop_postgres
from infra.procs import pid_matches, port_in_use, stop_pid
from infra.tansu import start_broker
from schema import migrate
from streams.config import Broker
from streams.errors import StreamsError
from streams.topics import TopicAdmin

HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
DEFAULT_API_APP = "api.app:create_app"
# Words each service's command line contains: a pid from an old profile that
# the OS has since given to another program must never be signalled.
_CMDLINE = {"api": "uvicorn", "broker": "tansu", "postgres": "postgres"}
_LABEL = {"api": "API", "broker": "broker", "postgres": "PostgreSQL"}
_STOP_ORDER = ("api", "broker", "postgres")


@dataclass(frozen=True)
class Paths:
    """Where one platform keeps its profile, logs and database files."""

    root: Path

    @property
    def profile(self) -> Path:
        """The profile file `up` writes."""
        return self.root / "profile.json"

    @property
    def pgdata(self) -> Path:
        """The embedded PostgreSQL's data folder."""
        return self.root / "postgres"

    def log(self, service: str) -> Path:
        """The log file of `service`."""
        return self.root / "logs" / f"{service}.log"


def paths_for(data_dir: Path) -> Paths:
    """The absolute paths of the platform in `data_dir`."""
    return Paths(Path(data_dir).expanduser().resolve())


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `platform status`."""

    name: str
    address: str
    pid: int | None
    up: bool


class Steps:
    """Prints "starting X… ok (1.2 s)" around each step of a command."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Announce `label`, run the block, then say how it went and how long it took."""
        self.console.print(f"{label}… ", end="")
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.console.print("[red]failed[/red]")
            raise
        self.console.print(f"[green]ok[/green] ({time.monotonic() - started:.1f} s)")


# --- up -------------------------------------------------------------------


def running_profile(data_dir: Path) -> Profile | None:
    """The profile of the platform in `data_dir` if every process it started still runs."""
    paths = paths_for(data_dir)
    if not paths.profile.exists():
        return None
    profile = Profile.load(paths.profile)
    live = _live_pids(profile)
    return profile if live and live == profile.pids else None


def _live_pids(profile: Profile) -> dict[str, int]:
    return {name: pid for name, pid in profile.pids.items() if pid_matches(pid, _CMDLINE.get(name, ""))}


def up(
    data_dir: Path,
    api_port: int = DEFAULT_API_PORT,
    steps: Steps | None = None,
    api_app: str = DEFAULT_API_APP,
    foreground: bool = False,
    api_workers: int = 1,
) -> tuple[Profile, subprocess.Popen[bytes]]:
    """Start the platform in `data_dir`, write its profile; stop what started if a step fails.

    With `api_workers` > 1 the API's pid is uvicorn's supervisor, which starts and stops the workers.
    """
    paths, steps = paths_for(data_dir), steps or Steps()
    _refuse_partial(paths)
    if port_in_use(HOST, api_port):
        raise PlatformError(
            f"cannot start the API: port {api_port} on {HOST} is already in use "
            "(stop what listens there, or pass --api-port)"
        )
    paths.log("api").parent.mkdir(parents=True, exist_ok=True)
    profile = Profile(api_url=f"http://{HOST}:{api_port}", data_dir=str(paths.root),
                      topic_prefix=Settings.from_env().topic_prefix)
    try:
        _start_database(paths, profile, steps)
        _start_broker(paths, profile, steps, detach=not foreground)
        api = _start_api(paths, profile, api_port, api_app, steps, detach=not foreground,
                         workers=api_workers)
    except BaseException:
        # Half a platform is worse than none: stop what this call started.
        _stop_services(paths, profile.pids, Steps(Console(quiet=True)))
        raise
    profile.save(paths.profile)
    return profile, api


def _refuse_partial(paths: Paths) -> None:
    if not paths.profile.exists():
        return
    profile = Profile.load(paths.profile)
    live = _live_pids(profile)
    dead = sorted(set(profile.pids) - set(live))
    if live and dead:
        raise PlatformError(
            f"the platform in {paths.root} is partly up ({', '.join(_LABEL[d] for d in dead)} "
            "stopped); run `musketeer platform down` first"
        )


def _start_database(paths: Paths, profile: Profile, steps: Steps) -> None:
    external = Settings.external_services()[0]
    if external:
        profile.database_url = external
        with steps.step("checking PostgreSQL (DATABASE_URL)"):
            _select_one(external)
    else:
        with steps.step("starting PostgreSQL"):
            url, pid = start_postgres(paths.pgdata, log_path=paths.log("postgres"))
        profile.database_url, profile.pids["postgres"] = url, pid
    with steps.step("applying migrations"):
        _migrate(profile.database_url)


def _select_one(url: str) -> None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise PlatformError(f"PostgreSQL at {_mask(url)} does not answer: {exc}") from exc


def _migrate(url: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate.apply(conn)
    except psycopg.Error as exc:
        raise PlatformError(f"migrations failed on {_mask(url)}: {exc}") from exc


def _start_broker(paths: Paths, profile: Profile, steps: Steps, detach: bool) -> None:
    external = Settings.external_services()[1]
    if external:
        profile.kafka_bootstrap_servers = external
        with steps.step(f"checking broker at {external} (KAFKA_BOOTSTRAP_SERVERS)"):
            _ping(external)
        return
    with steps.step("starting broker"):
        broker = start_broker(log_path=paths.log("broker"), detach=detach)
    profile.kafka_bootstrap_servers, profile.pids["broker"] = broker.bootstrap, broker.pid


def _ping(bootstrap: str) -> None:
    try:
        # With the KAFKA_* security settings in force: a real broker may need them to answer.
        TopicAdmin(Broker(bootstrap, Settings.from_env().kafka_security)).ping(timeout_s=5)
    except StreamsError as exc:
        raise PlatformError(str(exc)) from exc


def _start_api(
    paths: Paths, profile: Profile, port: int, app: str, steps: Steps, detach: bool, workers: int = 1
) -> subprocess.Popen[bytes]:
    shown = f" ({workers} workers)" if workers > 1 else ""
    with steps.step(f"starting API on {HOST}:{port}{shown}"):
        api = _spawn_api(paths, profile, port, app, detach, workers)
        profile.pids["api"] = api.pid
        wait_healthy(api, profile.api_url, paths.log("api"))
    return api


def _spawn_api(
    paths: Paths, profile: Profile, port: int, app: str, detach: bool, workers: int = 1
) -> subprocess.Popen[bytes]:
    assert profile.database_url and profile.kafka_bootstrap_servers
    env = api_environment(profile.database_url, profile.kafka_bootstrap_servers)
    return spawn_api(port, env, paths.log("api"), detach=detach, app=app, workers=workers)


def serve_foreground(data_dir: Path, api: subprocess.Popen[bytes], steps: Steps | None = None) -> int:
    """Wait on the API process; on its exit, Ctrl-C or SIGTERM, stop the whole platform."""

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a supervisor stopping us) must clean up exactly like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return api.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        down(data_dir, steps)


# --- down -----------------------------------------------------------------


def down(data_dir: Path, steps: Steps | None = None) -> list[str]:
    """Stop what `up` started in `data_dir` and forget the pids; return the services stopped."""
    paths, steps = paths_for(data_dir), steps or Steps()
    if not paths.profile.exists():
        return []
    profile = Profile.load(paths.profile)
    stopped = _stop_services(paths, profile.pids, steps)
    profile.pids = {}
    profile.save(paths.profile)
    return stopped


def _stop_services(paths: Paths, pids: dict[str, int], steps: Steps) -> list[str]:
    stopped = []
    # API first, so it does not log a storm of errors about the others leaving.
    for name in _STOP_ORDER:
        if name in pids and _stop_one(paths, name, pids[name], steps):
            stopped.append(name)
    return stopped


def _stop_one(paths: Paths, name: str, pid: int, steps: Steps) -> bool:
    if name == "postgres":
        if not postgres_running(paths.pgdata):
            return False
        with steps.step("stopping PostgreSQL"):
            return stop_postgres(paths.pgdata)
    if not pid_matches(pid, _CMDLINE[name]):
        return False
    with steps.step(f"stopping {_LABEL[name]}"):
        return stop_pid(pid)


# --- status ---------------------------------------------------------------


def status(data_dir: Path) -> list[ServiceStatus]:
    """API, broker and database of the platform in `data_dir`, each checked for real."""
    paths = paths_for(data_dir)
    if not paths.profile.exists():
        # No profile: nothing to check (probing a default port could find a stranger).
        return [ServiceStatus(_LABEL[name], "-", None, False) for name in _LABEL]
    profile = Profile.load(paths.profile)
    checks: list[tuple[str, str | None, Callable[[str], bool]]] = [
        ("api", profile.api_url, lambda url: healthy(url, timeout_s=2.0)),
        ("broker", profile.kafka_bootstrap_servers, _broker_answers),
        ("postgres", profile.database_url, _database_answers),
    ]
    # Checked in parallel: an unreachable broker alone takes its full timeout.
    with ThreadPoolExecutor(len(checks)) as pool:
        answers = list(pool.map(lambda check: _probe(check[1], check[2]), checks))
    return [
        ServiceStatus(_LABEL[name], _mask(address) if address else "-", profile.pids.get(name), ok)
        for (name, address, _), ok in zip(checks, answers, strict=True)
    ]


def _probe(address: str | None, answers: Callable[[str], bool]) -> bool:
    return address is not None and answers(address)


def _broker_answers(bootstrap: str) -> bool:
    try:
        TopicAdmin(bootstrap).ping(timeout_s=2.0)
    except StreamsError:
        return False
    return True


def _database_answers(url: str) -> bool:
    try:
        _select_one(url)
    except PlatformError:
        return False
    return True


def _mask(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)
