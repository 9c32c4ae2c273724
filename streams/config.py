"""Producer and consumer settings shared by every process that talks to the broker, security included.

The values are the same for the embedded broker (tansu) and Apache Kafka: the code never depends
on which broker it talks to. Every Kafka client of the platform (the API's relay and topic admin,
both daemons) is configured from one `Broker`: its address and its `KafkaSecurity`, which the
server's Settings and the client's Profile read from the same environment variables.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Payload chunks are at most 1 MiB plus a small envelope. The producer's own
# cap (librdkafka's default is 1,000,000 bytes, less than 1 MiB) must be above
# that, with room for headers and batch overhead; 2 MiB + 64 KiB leaves margin.
# The broker's limit (Kafka's default is 1 MiB + 12 bytes) still applies.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024 + 64 * 1024

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The environment variable behind each setting (named in every error about it).
SECURITY_VARIABLES = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "ssl_certificate_location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "KAFKA_SSL_KEY_LOCATION",
}


class SecurityError(ValueError):
    """A Kafka security setting is missing, unknown or points nowhere (the message names it)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client authenticates to the broker and protects the connection."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # a secret: never in a repr or log
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise SecurityError(f"KAFKA_SECURITY_PROTOCOL={self.protocol!r} is invalid: must be one of "
                                f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.protocol.startswith("SASL_"):
            self._check_sasl()
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise SecurityError("KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is "
                                f"{self.protocol}: use SASL_PLAINTEXT or SASL_SSL")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            location = getattr(self, name)
            if location is not None and not Path(location).is_file():
                raise SecurityError(f"{SECURITY_VARIABLES[name]}={location!r} is invalid: no such file")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise SecurityError("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together "
                                "(a client certificate needs its key)")

    def _check_sasl(self) -> None:
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise SecurityError(f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is invalid with "
                                f"{self.protocol}: must be one of {', '.join(SASL_MECHANISMS)}")
        for name in ("sasl_username", "sasl_password"):
            if not getattr(self, name):
                raise SecurityError(f"{SECURITY_VARIABLES[name]} must be set with {self.protocol}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> KafkaSecurity:
        """The settings named by SECURITY_VARIABLES in `values` (an environment); empty means unset."""
        given = {name: values.get(variable) or None for name, variable in SECURITY_VARIABLES.items()}
        protocol = given.pop("protocol") or "PLAINTEXT"
        return cls(protocol=protocol.upper(), **given)

    def config(self) -> dict[str, Any]:
        """librdkafka's names for these settings (only those that are set)."""
        values = {"security.protocol": self.protocol, "sasl.mechanism": self.sasl_mechanism,
                  "sasl.username": self.sasl_username, "sasl.password": self.sasl_password,
                  "ssl.ca.location": self.ssl_ca_location,
                  "ssl.certificate.location": self.ssl_certificate_location,
                  "ssl.key.location": self.ssl_key_location}
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to talk to it safely."""

    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __str__(self) -> str:
        return self.bootstrap

    def config(self) -> dict[str, Any]:
        """The connection settings every Kafka client of the platform starts from."""
        return {"bootstrap.servers": self.bootstrap, **self.security.config()}


def as_broker(broker: Broker | str) -> Broker:
    """A Broker; a bare address means a plain connection (tests, the embedded broker)."""
    return broker if isinstance(broker, Broker) else Broker(broker)


def producer_config(broker: Broker | str, **overrides: Any) -> dict[str, Any]:
    """Settings for a durable, ordered, duplicate-free producer."""
    config: dict[str, Any] = {
        **as_broker(broker).config(),
        # Wait for every in-sync replica: a lost acknowledged message would
        # silently drop a model update or an event.
        "acks": "all",
        # Retries after a timeout must not duplicate or reorder messages
        # (tansu 0.6 and Kafka >= 0.11 both accept InitProducerId).
        "enable.idempotence": True,
        # Small batching window: chunks of one payload leave together without
        # adding noticeable latency to single control messages.
        "linger.ms": 5,
        "message.max.bytes": MAX_MESSAGE_BYTES,
    }
    config.update(overrides)
    return config


def consumer_config(broker: Broker | str, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Settings for a consumer that commits only what it has processed."""
    config: dict[str, Any] = {
        **as_broker(broker).config(),
        # confluent-kafka refuses a consumer without a group id, even one that
        # only assign()s partitions; a fresh id per reader keeps two readers
        # from splitting one topic's partitions between them by accident.
        "group.id": group_id or f"musketeer-reader-{uuid.uuid4().hex}",
        # Commit by hand after an update or event is handled, so a crash
        # re-reads it instead of losing it.
        "enable.auto.commit": False,
        # A reader that joins late (a participant after the round's broadcast)
        # must still see the messages written before it arrived.
        "auto.offset.reset": "earliest",
    }
    config.update(overrides)
    return config
