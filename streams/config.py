"""Producer and consumer settings shared by every process that talks to the broker.

The values are the same for the embedded broker (tansu) and Apache Kafka:
the code never depends on which broker it talks to.
"""

from __future__ import annotations

import uuid
from typing import Any

# Payload chunks are at most 1 MiB plus a small envelope. The producer's own
# cap (librdkafka's default is 1,000,000 bytes, less than 1 MiB) must be above
# that, with room for headers and batch overhead; 2 MiB + 64 KiB leaves margin.
# The broker's limit (Kafka's default is 1 MiB + 12 bytes) still applies.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024 + 64 * 1024


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Settings for a durable, ordered, duplicate-free producer."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
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


def consumer_config(
    bootstrap: str, group_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """Settings for a consumer that commits only what it has processed."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
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
