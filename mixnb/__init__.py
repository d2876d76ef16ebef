"""mixnb: a notebook-first, GPU-fast benchmark of mixup augmentations on Tiny-ImageNet.

The reference protocol is OpenMixup's Tiny-ImageNet benchmark (docs/protocol.md).
"""

__version__ = "0.1.0"

# The library API (mixnb/mixer.py), imported on first use so that `import mixnb` stays light for the CLI.
_MIXER_NAMES = ("Mixer", "MixInfo", "ModelHookError", "SoftTargetCrossEntropy", "mixup_target",
                "soft_target_cross_entropy")


def __getattr__(name: str):
    if name in _MIXER_NAMES:
        from mixnb import mixer

        return getattr(mixer, name)
    raise AttributeError(f"module 'mixnb' has no attribute {name!r}")
