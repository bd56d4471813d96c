"""Training data: datasets by name or path, the image-array file format, and endless resumable loaders."""

from ddgan.data.arrays import read_image_array, read_labels, write_image_array
from ddgan.data.dataset import (
    DATASET_NAMES,
    BadImageError,
    ImageDataset,
    default_data_root,
    describe_dataset,
    open_dataset,
)
from ddgan.data.demo import DemoShapes
from ddgan.data.loader import InfiniteSampler, make_loader

__all__ = [
    "DATASET_NAMES",
    "BadImageError",
    "DemoShapes",
    "ImageDataset",
    "InfiniteSampler",
    "default_data_root",
    "describe_dataset",
    "make_loader",
    "open_dataset",
    "read_image_array",
    "read_labels",
    "write_image_array",
]
