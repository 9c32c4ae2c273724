"""The streams package's own error types; confluent-kafka errors become these where caught."""

from __future__ import annotations

from confluent_kafka import KafkaError

# librdkafka's codes for "the broker did not answer", as opposed to "the broker said no".
UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                         KafkaError._MSG_TIMED_OUT})


class StreamsError(Exception):
    """A broker operation failed (the message names the topic and the broker)."""


class BrokerUnavailable(StreamsError):
    """The broker cannot be reached at its bootstrap address."""
