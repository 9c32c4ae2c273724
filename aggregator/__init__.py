"""The aggregator daemon, one file per step of a round: broadcast, collect, verify, fold, record;
plus waiting for the quorum, federated standardisation and checkpoints.

Imports: schema, streams, client, ml. Never the API's server code or the participant daemon.
"""
