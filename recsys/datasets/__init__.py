"""Dataset loaders returning RawDataset: synthetic (default), MovieLens, generic tables, NGCF/LightGCN text."""

from recsys.datasets.base import RawDataset
from recsys.datasets.benchmark_txt import load_benchmark_txt
from recsys.datasets.generic import load_generic
from recsys.datasets.movielens import load_movielens
from recsys.datasets.registry import available_datasets, load_dataset, register_dataset
from recsys.datasets.synthetic import generate_synthetic

__all__ = [
           "RawDataset",
           "available_datasets",
           "generate_synthetic",
           "load_benchmark_txt",
           "load_dataset",
           "load_generic",
           "load_movielens",
           "register_dataset",
]
