"""Learning code both daemons share: the model registry, Keras helpers, data connectors,
standardisation, seeds and the aggregation strategies.

Imports: schema, streams (the codec only). Never the API, the client or either daemon.
"""
