"""Data: the Tiny-ImageNet reader and cache, the synthetic sample set, and the device loader."""

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
from mixnb.data.tinyimagenet import DatasetError, TinyImageNetTensors, load_tiny_imagenet

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetError",
    "DeviceLoader",
    "TinyImageNetTensors",
    "batch_flip_lr",
    "batch_random_resized_crop",
    "load_tiny_imagenet",
    "make_sample_dataset",
    "normalize",
    "resized_crop",
    "sample_crop_boxes",
]
