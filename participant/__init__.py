"""The participant daemon (which joined tasks to serve) and its worker (one task: follow the
broadcasts, train locally, send the update). Local data never leaves this process.

Imports: schema, streams, client, ml. Never the API's server code or the aggregator daemon.
"""
