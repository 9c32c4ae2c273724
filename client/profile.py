"""The profile: where the platform is (API URL, broker, database), like the seed's credentials file.

`musketeer platform up` writes it; the CLI, the Python client and the daemons
read it. Lookup order: `--profile`, `MUSKETEER_PROFILE`, then `./.musketeer/profile.json`,
then `~/.musketeer/profile.json`. `--as USER` (or `MUSKETEER_USER`) picks whose saved login
the commands use. Environment variables (`MUSKETEER_API_URL`,
`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `MUSKETEER_TOPIC_PREFIX`) win over what the
file says. This module is the one place on the client side that reads the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8000"


def default_data_dir() -> Path:
    """The folder `platform up` uses when given none."""
    return Path.cwd() / ".musketeer"


def chosen_data_dir() -> Path:
    """Where `platform up`, `down` and `status` work when not given `--data-dir`: the folder of
    the profile `--profile` or `MUSKETEER_PROFILE` names (so `musketeer --profile DIR platform
    down`, as `platform up` suggests, stops that platform), else `./.musketeer`."""
    if _chosen.profile is not None:
        return _chosen.profile.parent
    explicit = os.environ.get("MUSKETEER_PROFILE")
    return Path(explicit).parent if explicit else default_data_dir()


def default_demo_dir() -> Path:
    """The folder `demo` uses when given none: apart from `platform up`'s, so the users the demo
    registers (alice, john, jack, with the demo's password) are not waiting in the platform a
    newcomer starts next and registers alice on."""
    return Path.cwd() / ".musketeer-demo"


@dataclass
class _Choice:
    """What the command line chose for this process (`--profile`, `--as`); None: not chosen."""

    profile: Path | None = None
    user: str | None = None


_chosen = _Choice()


def choose(profile: Path | None = None, user: str | None = None) -> None:
    """Use this profile (a file, or the folder `platform up --data-dir` made) and this user's login."""
    if profile is not None and (profile.is_dir() or profile.suffix != ".json"):
        profile = profile / "profile.json"
    _chosen.profile, _chosen.user = profile, user


def chosen_user() -> str | None:
    """Whose saved login to use: `--as`, else `MUSKETEER_USER`, else the current one (None)."""
    return _chosen.user or os.environ.get("MUSKETEER_USER") or None


def profile_path() -> Path:
    """The profile file in force (it may not exist)."""
    if _chosen.profile is not None:
        return _chosen.profile
    explicit = os.environ.get("MUSKETEER_PROFILE")
    if explicit:
        return Path(explicit)
    local = default_data_dir() / "profile.json"
    if local.exists():
        return local
    home = Path.home() / ".musketeer" / "profile.json"
    return home if home.exists() else local


def describe_profile() -> str:
    """Where the client found its profile, or where it looked: for an error that says what to do."""
    path = profile_path()
    if _chosen.profile is not None:
        origin = f"--profile {path}"
    elif os.environ.get("MUSKETEER_PROFILE"):
        origin = f"MUSKETEER_PROFILE={path}"
    else:
        local, home = default_data_dir() / "profile.json", Path.home() / ".musketeer" / "profile.json"
        if not path.exists():
            return (f"no profile found (looked for {local} and {home}); `musketeer platform up "
                    "--data-dir DIR` writes DIR/profile.json: name it with --profile DIR "
                    "(or MUSKETEER_PROFILE)")
        origin = str(path)
    if not path.exists():
        return f"the profile {origin} does not exist"
    return f"the address comes from the profile {origin}"


@dataclass
class Profile:
    """Addresses of a running platform and the processes `platform up` started."""

    api_url: str = DEFAULT_API_URL
    kafka_bootstrap_servers: str | None = None
    database_url: str | None = None
    topic_prefix: str = "musketeer"
    data_dir: str | None = None
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Profile:
        """The profile at `path` (or the one in force), with environment overrides."""
        path = path or profile_path()
        raw: dict[str, Any] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"profile {path} is not valid JSON: {exc}") from exc
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        profile = cls(**known)
        profile.api_url = os.environ.get("MUSKETEER_API_URL") or profile.api_url
        profile.kafka_bootstrap_servers = (
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or profile.kafka_bootstrap_servers
        )
        profile.database_url = os.environ.get("DATABASE_URL") or profile.database_url
        profile.topic_prefix = os.environ.get("MUSKETEER_TOPIC_PREFIX") or profile.topic_prefix
        return profile

    def save(self, path: Path) -> None:
        """Write the profile atomically (a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    def broker_address(self) -> str:
        """The broker's bootstrap address; ValueError, saying how to get one, if there is none."""
        if not self.kafka_bootstrap_servers:
            raise ValueError("no broker address: run `musketeer platform up` or set KAFKA_BOOTSTRAP_SERVERS")
        return self.kafka_bootstrap_servers

    @staticmethod
    def kafka_settings() -> dict[str, str]:
        """The KAFKA_* security variables that are set (streams.config.KafkaSecurity reads them)."""
        return {name: value for name, value in os.environ.items() if name.startswith("KAFKA_") and value}

    @property
    def events_topic(self) -> str:
        """The topic the API relays every committed event to."""
        return f"{self.topic_prefix}.events"

    def keys_dir(self) -> Path:
        """Where this machine keeps its members' signing keys (`MUSKETEER_KEYS_DIR`, else beside
        the saved login)."""
        explicit = os.environ.get("MUSKETEER_KEYS_DIR")
        return Path(explicit) if explicit else self.credentials_path().parent / "keys"

    def credentials_path(self) -> Path:
        """Where `musketeer login` keeps the bearer token, beside the profile."""
        explicit = os.environ.get("MUSKETEER_CREDENTIALS")
        if explicit:
            return Path(explicit)
        return profile_path().parent / "credentials.json"


def environment_token() -> str | None:
    """A bearer token given in `MUSKETEER_TOKEN` (it wins over the saved login)."""
    return os.environ.get("MUSKETEER_TOKEN") or None


def environment_password() -> str | None:
    """A password given in `MUSKETEER_PASSWORD` (for scripts; a prompt is safer)."""
    return os.environ.get("MUSKETEER_PASSWORD") or None
