"""Aggregation strategies: how the aggregator folds participants' updates into the next model."""
