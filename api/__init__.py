"""The server alone: `create_app`, routes, command handlers, the event store (one contract,
in-memory and PostgreSQL backends), projections, queries, the outbox relay, auth, settings.

Imports: schema, streams. Never the client, the learning code or the daemons.
"""
