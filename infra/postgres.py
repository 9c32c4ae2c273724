"""The embedded PostgreSQL: pgserver's bundled binaries, driven with initdb and pg_ctl.

We drive `pg_ctl` directly rather than `pgserver.get_server()`: pgserver stops
the server when the Python process that started it exits, and listens on a
unix socket only, while the platform needs a server that outlives
`platform up` and a TCP URL any client can use. The port is chosen once, at
initdb, and written into postgresql.conf, so a restart (the fault tests stop
and start it) keeps the same URL. Running as root, postgres refuses to start;
like pgserver, we run it as the system user `pgserver`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import psycopg

from infra.errors import PlatformError
from infra.procs import find_free_port, log_tail, pid_matches, port_in_use

HOST = "127.0.0.1"
DATABASE = "musketeer"
DEFAULT_DATA_DIR = Path(".musketeer/postgres")
SYSTEM_USER = "pgserver"
_GO_RX = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
_PERMISSION_HINT = (
    f" (as root, PostgreSQL runs as the user {SYSTEM_USER!r}, which must be able to"
    " enter every parent folder of the data dir)"
)
_PORT_LINE = re.compile(r"^port\s*=\s*(\d+)", re.MULTILINE)


def _bin(name: str) -> str:
    # Locate pgserver's binaries without importing it: its import creates
    # runtime dirs and warns when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise PlatformError("the embedded PostgreSQL needs `pip install pgserver` (extra `local`)")
    return str(Path(spec.origin).parent / "pginstall" / "bin" / name)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _run(args: list[str], pgdata: Path, timeout_s: float) -> None:
    """Run a PostgreSQL tool, as the `pgserver` user when we are root."""
    try:
        subprocess.run(
            args, check=True, capture_output=True, text=True, timeout=timeout_s, cwd=pgdata,
            user=SYSTEM_USER if _as_root() else None,
            # Own session: the postmaster that pg_ctl forks must outlive
            # `platform up` and not receive a Ctrl-C meant for it.
            start_new_session=True,
        )
    except subprocess.CalledProcessError as exc:
        hint = _PERMISSION_HINT if _as_root() and "Permission denied" in exc.stderr else ""
        raise PlatformError(f"{Path(args[0]).name} failed for {pgdata}: {exc.stderr.strip()}{hint}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PlatformError(f"{Path(args[0]).name} timed out after {timeout_s:g} s for {pgdata}") from exc


def _prepare_for_root(pgdata: Path) -> None:
    """Create the `pgserver` user and let it reach the binaries and own the data dir."""
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/bin/false", SYSTEM_USER],
                       check=True, capture_output=True)
    _allow_traversal(pgdata)
    bin_dir = Path(_bin("postgres")).parent
    for folder in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
        _allow_traversal(folder)
        _open_tree(folder)
    _give_to_system_user(pgdata)


def _allow_traversal(path: Path) -> None:
    """Let other users traverse every parent folder of `path` (as pgserver does)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & _GO_RX != _GO_RX:
            parent.chmod(mode | _GO_RX)


def _open_tree(folder: Path) -> None:
    """Make a folder tree readable (and its executables runnable) by other users."""
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            path = Path(root, name)
            path.chmod(path.stat().st_mode | _GO_RX)
        for name in files:
            path = Path(root, name)
            mode = path.stat().st_mode
            wanted = mode | stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                wanted |= stat.S_IXGRP | stat.S_IXOTH
            if wanted != mode:
                path.chmod(wanted)


def _give_to_system_user(path: Path) -> None:
    if _as_root():
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _init_cluster(pgdata: Path) -> None:
    """initdb with trust auth, then pin TCP on 127.0.0.1 and a port chosen now."""
    _run(
        [_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
         "--encoding=UTF8", "--no-locale"],
        pgdata, timeout_s=120,
    )
    # Later lines of postgresql.conf win over earlier ones. No unix socket:
    # its default directory may not be writable, and the URL is TCP anyway.
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# musketeer embedded server\n"
            f"listen_addresses = '{HOST}'\nport = {find_free_port(HOST)}\n"
            "unix_socket_directories = ''\n"
        )


def configured_port(data_dir: Path) -> int:
    """The TCP port written into the cluster's postgresql.conf at initdb."""
    found = _PORT_LINE.findall((Path(data_dir) / "postgresql.conf").read_text())
    if not found:
        raise PlatformError(f"no port in {data_dir}/postgresql.conf; was it made by musketeer?")
    return int(found[-1])


def database_url(data_dir: Path, database: str = DATABASE) -> str:
    """The psycopg URL of `database` on the embedded server in `data_dir`."""
    return f"postgresql://postgres@{HOST}:{configured_port(data_dir)}/{database}"


def postgres_pid(data_dir: Path) -> int | None:
    """The postmaster's pid if it is running, else None."""
    pid_file = Path(data_dir) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    # The pid in a stale postmaster.pid (server killed) may since have been
    # given to an unrelated process; only a `postgres` counts.
    return pid if pid_matches(pid, "postgres") else None


def postgres_running(data_dir: Path) -> bool:
    """Whether the embedded server in `data_dir` is running."""
    return postgres_pid(data_dir) is not None


def start_postgres(
    data_dir: Path = DEFAULT_DATA_DIR, log_path: Path | None = None, timeout_s: float = 60
) -> tuple[str, int]:
    """Start (initialising on first use) the server in `data_dir`; return (database_url, pid)."""
    pgdata = Path(data_dir).resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    if _as_root():
        _prepare_for_root(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        _init_cluster(pgdata)
    if not postgres_running(pgdata):
        _start_server(pgdata, log_path or pgdata.parent / "logs" / "postgres.log", timeout_s)
    pid = postgres_pid(pgdata)
    if pid is None:
        raise PlatformError(f"PostgreSQL in {pgdata} stopped right after starting")
    _ensure_database(pgdata, DATABASE)
    return database_url(pgdata), pid


def _start_server(pgdata: Path, log_path: Path, timeout_s: float) -> None:
    port = configured_port(pgdata)
    if port_in_use(HOST, port):
        raise PlatformError(
            f"cannot start PostgreSQL ({pgdata}): port {port} on {HOST} is already in use"
        )
    # A postmaster.pid left by a killed server would make postgres refuse to
    # start if its pid now belongs to another process; it is stale, drop it.
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    _give_to_system_user(log_path)
    try:
        _run([_bin("pg_ctl"), "-D", str(pgdata), "-l", str(log_path), "-w",
              "-t", str(int(timeout_s)), "start"], pgdata, timeout_s + 5)
    except PlatformError as exc:
        raise PlatformError(f"{exc}; see {log_path}\n{log_tail(log_path)}".rstrip()) from exc


def _ensure_database(pgdata: Path, name: str) -> None:
    with psycopg.connect(database_url(pgdata, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def stop_postgres(data_dir: Path = DEFAULT_DATA_DIR, timeout_s: float = 60) -> bool:
    """Stop the server in `data_dir` (fast shutdown); False if it was not running."""
    pgdata = Path(data_dir).resolve()
    if not postgres_running(pgdata):
        return False
    # "fast": roll back open transactions and disconnect clients now, but
    # still checkpoint, so the next start needs no crash recovery.
    _run([_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w",
          "-t", str(int(timeout_s)), "stop"], pgdata, timeout_s + 5)
    return True
