"""Data: the dataset readers (one per form, `load_dataset` detects which) and their cache, the synthetic sample
set, and the device loader."""

from mixnb.data.base import DatasetError, ImageTensors, TinyImageNetTensors
from mixnb.data.detect import detect_form, load_dataset
from mixnb.data.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceLoader,
    batch_flip_lr,
    batch_random_resized_crop,
    normalize,
    resized_crop,
    sample_crop_boxes,
)
from mixnb.data.sample import make_sample_dataset
from mixnb.data.tinyimagenet import load_tiny_imagenet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetError",
    "DeviceLoader",
    "ImageTensors",
    "TinyImageNetTensors",
    "batch_flip_lr",
    "batch_random_resized_crop",
    "detect_form",
    "load_dataset",
    "load_tiny_imagenet",
    "make_sample_dataset",
    "normalize",
    "resized_crop",
    "sample_crop_boxes",
]
