"""Kafka plumbing only: client settings, topic names and admin, framing, the array codec,
the payload writer and reader, and the relayed event log (its writer and reader side by side).

Imports: schema (and confluent-kafka, numpy). Knows nothing of the API, the client or learning.
"""
