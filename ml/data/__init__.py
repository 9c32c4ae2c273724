"""Data connectors: a spec such as `mnist:/data/mnist` or `csv:site.csv` becomes a `Dataset`."""

from ml.data.dataset import DataError, Dataset, DataWarning
from ml.data.sources import known_sources, load_dataset, parse_shard, shard_dataset, split_and_sample

__all__ = [
    "DataError",
    "DataWarning",
    "Dataset",
    "known_sources",
    "load_dataset",
    "parse_shard",
    "shard_dataset",
    "split_and_sample",
]
