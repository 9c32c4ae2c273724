"""One validated Settings: every environment variable is named here, once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from streams.config import Broker, KafkaSecurity, SecurityError

T = TypeVar("T")

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/musketeer"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class SettingsError(ValueError):
    """An environment variable holds a value the platform cannot use."""


def _read(name: str, default: T, parse: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"environment variable {name}={raw!r} is invalid: {exc}") from exc


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a finite number of seconds, 0 or more")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _topic_prefix(raw: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not raw or set(raw) - allowed or len(raw) > 100:
        raise ValueError("must be 1-100 of [A-Za-z0-9._-]")
    return raw


def _kafka_security() -> KafkaSecurity:
    try:
        return KafkaSecurity.from_mapping(os.environ)
    except SecurityError as exc:
        raise SettingsError(f"environment variable {exc}") from exc


DEFAULT_API_THREADS = 8


@dataclass(frozen=True)
class Settings:
    """Everything the API process reads from its environment."""

    database_url: str
    kafka_bootstrap_servers: str
    topic_prefix: str
    token_ttl_s: int
    relay_enabled: bool
    db_pool_size: int
    topic_retention_s: float
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # Threads that run the blocking work of requests (database, broker admin). Few suit a small
    # machine: each thread more contends for the one GIL, and 32 clients ran about 20 % fewer
    # joins a second with 40 threads (anyio's default) than with 8 (bench/api_bench.py).
    api_threads: int = DEFAULT_API_THREADS

    @property
    def broker(self) -> Broker:
        """The broker's address with the security every Kafka client of the API uses."""
        return Broker(self.kafka_bootstrap_servers, self.kafka_security)

    @property
    def events_topic(self) -> str:
        """The topic every committed event is relayed to."""
        return f"{self.topic_prefix}.events"

    @staticmethod
    def external_services() -> tuple[str | None, str | None]:
        """(DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS) when the environment names real servers."""
        return _read("DATABASE_URL", None, str), _read("KAFKA_BOOTSTRAP_SERVERS", None, str)

    @classmethod
    def from_env(cls) -> Settings:
        """Read and validate the environment; a bad value names its variable."""
        return cls(
            database_url=_read("DATABASE_URL", DEFAULT_DATABASE_URL, str),
            kafka_bootstrap_servers=_read("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP, str),
            topic_prefix=_read("MUSKETEER_TOPIC_PREFIX", "musketeer", _topic_prefix),
            token_ttl_s=_read("MUSKETEER_TOKEN_TTL_S", 12 * 3600, _positive_int),
            relay_enabled=_read("MUSKETEER_RELAY", True, _flag),
            db_pool_size=_read("MUSKETEER_DB_POOL_SIZE", 10, _positive_int),
            topic_retention_s=_read("MUSKETEER_TOPIC_RETENTION_S", 3600.0, _non_negative_float),
            api_threads=_read("MUSKETEER_API_THREADS", DEFAULT_API_THREADS, _positive_int),
            kafka_security=_kafka_security(),
        )
