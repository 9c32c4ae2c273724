"""Ports and processes: the small OS helpers every local service needs."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on `host:port` because one already does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that a port left in TIME_WAIT by a stopped server
        # counts as free: only a live listener makes bind() fail on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A detached service whose parent exited is re-parented to PID 1, which in
    # a container may never reap it: its zombie must count as stopped.
    return _state(pid) != "Z"


def cmdline(pid: int) -> str:
    """The command line of `pid`, or "" where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_matches(pid: int, needle: str) -> bool:
    """Whether `pid` is alive and (where /proc tells) its command line mentions `needle`."""
    if not pid_alive(pid):
        return False
    line = cmdline(pid)
    # Without /proc (macOS) there is nothing to compare; trust the pid.
    return needle in line if line else True


def stop_pid(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGTERM `pid`, then SIGKILL if it outlives `timeout_s`; False if it was not running."""
    if not pid_alive(pid):
        return False
    _signal(pid, signal.SIGTERM)
    if not wait_for_exit(pid, timeout_s):
        _signal(pid, signal.SIGKILL)
        wait_for_exit(pid, 5.0)
    return True


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Poll until `pid` has exited; False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        # Polling: a process that is not our child cannot be wait()ed for.
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def log_tail(path: Path | None, lines: int = 15) -> str:
    """The last `lines` lines of a log file, indented, for an error message."""
    if path is None or not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in tail)
