"""mixnb: a notebook-first, GPU-fast benchmark of mixup augmentations on Tiny-ImageNet.

The reference protocol is OpenMixup's Tiny-ImageNet benchmark (../shared/spec/protocol.md).
"""

__version__ = "0.1.0"
