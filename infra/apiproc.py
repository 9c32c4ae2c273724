"""Run the API as its own process (uvicorn), as `platform up`, tests and benchmarks do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.errors import PlatformError
from infra.procs import find_free_port, log_tail

HOST = "127.0.0.1"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def api_environment(database_url: str, bootstrap: str, **extra: str) -> dict[str, str]:
    """The API's environment: ours plus the database and broker addresses."""
    env = {**os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **extra}
    # The API must import from this checkout even when run from elsewhere.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


DEFAULT_APP = "api.app:create_app"


def spawn_api(port: int, env: dict[str, str], log_path: Path, detach: bool = False,
              app: str = DEFAULT_APP, workers: int = 1) -> subprocess.Popen[bytes]:
    """Start uvicorn serving the app factory `app` on 127.0.0.1:`port` with `workers` processes."""
    if workers < 1:
        raise PlatformError(f"the API needs at least one worker process, not {workers}")
    command = [sys.executable, "-m", "uvicorn", app, "--factory",
               "--host", HOST, "--port", str(port), "--log-level", "warning"]
    if workers > 1:
        # Why several processes can serve one database: every append takes the table lock in
        # PostgreSQL, not in Python, and the relays elect one leader by advisory lock.
        command += ["--workers", str(workers)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Detached: its own session, so it outlives the command that started it
        # and a Ctrl-C in that terminal does not reach it.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=detach)


def healthy(api_url: str, timeout_s: float = 1.0) -> bool:
    """Whether GET /healthz answers 200."""
    try:
        return httpx.get(f"{api_url}/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(popen: subprocess.Popen[bytes], api_url: str, log_path: Path,
                 timeout_s: float = 60) -> None:
    """Poll /healthz until it answers; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise PlatformError(f"the API exited during start-up (code {popen.returncode}); "
                                f"see {log_path}\n{log_tail(log_path)}")
        if healthy(api_url):
            return
        # Start-up imports FastAPI, migrates and opens the pool: a second or two.
        time.sleep(0.1)
    raise PlatformError(f"the API did not answer {api_url}/healthz within {timeout_s:g} s; "
                        f"see {log_path}")


@dataclass
class ApiProcess:
    """A running API process that can be stopped, killed and restarted on its port."""

    url: str
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    workers: int = 1

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (with several workers, only the supervisor is killed)."""
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Start again on the same port with the same environment."""
        self.popen = spawn_api(self.port, self.env, self.log_path, workers=self.workers)
        wait_healthy(self.popen, self.url, self.log_path)


def start_api(database_url: str, bootstrap: str, log_dir: Path, port: int | None = None,
              workers: int = 1, **extra_env: str) -> ApiProcess:
    """Start an API process (`workers` uvicorn workers) on a free port (or `port`); wait until healthy."""
    port = port or find_free_port(HOST)
    env = api_environment(database_url, bootstrap, **extra_env)
    log_path = log_dir / f"api-{port}.log"
    popen = spawn_api(port, env, log_path, workers=workers)
    url = f"http://{HOST}:{port}"
    wait_healthy(popen, url, log_path)
    return ApiProcess(url, port, env, log_path, popen, workers)
