"""Helpers the method tests share (tests/mixups/), with one seed convention; and the run folders, configs and small
Tiny-ImageNet replica that several of the other test files share (at the end).

Seeds: every draw comes from an explicit ``gen(seed)``, a CPU ``torch.Generator`` seeded with ``seed``. A helper that
draws takes the seed as an argument and makes its own generator, so a test's numbers depend only on the seeds it
names. ``ctx(seed)`` holds a training step's two streams: the mix stream ``gen(seed)`` and the host stream
``gen(seed + 1)`` (``cpu_seed=`` names another). ``tiny_model(seed)`` starts from ``torch.manual_seed(seed)``, as
``build_model`` initialises its weights from torch's global generator.

Imported as ``from helpers import ...``: tests/ is on sys.path (pytest's rootdir-based imports; tests/mixups is a
package under it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mixnb.config import RunConfig
from mixnb.data import ImageTensors, load_tiny_imagenet, make_sample_dataset
from mixnb.mixups import MixMethod, StepContext, get_method
from mixnb.models import build_model

H = W = 64  # image size of the method tests
K = 4  # classes of the tiny test model
REV5 = torch.tensor([4, 3, 2, 1, 0])  # a partner with one fixed point (2)
ID5 = torch.arange(5)  # every image its own partner


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 5, seed: int = 0, *, num_classes: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal images (n, 3, H, W), then labels in [0, num_classes), both from gen(seed)."""
    g = gen(seed)
    return torch.randn(n, 3, H, W, generator=g), torch.randint(num_classes, (n,), generator=g)


def constant_batch(n: int = 5) -> torch.Tensor:
    """Image i is the constant i, so every pixel says which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, H, W).clone()


def ctx(seed: int = 0, *, cpu_seed: int | None = None, step: int = 0, total_steps: int = 100) -> StepContext:
    """A training step's streams: the mix stream gen(seed), the host stream gen(seed + 1) unless cpu_seed is given."""
    return StepContext(gen=gen(seed), cpu_gen=gen(seed + 1 if cpu_seed is None else cpu_seed), step=step,
                       total_steps=total_steps)


def tiny_model(seed: int = 0, *, num_classes: int = K, width: int = 8, random_affine: bool = False) -> nn.Module:
    """A narrow ResNet-18 initialised from torch.manual_seed(seed). random_affine: BN weights 1 + N(0, 0.3^2), biases
    N(0, 0.1^2) and fc weights N(0, 0.5^2) from gen(seed), so no residual branch starts as the identity."""
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes=num_classes, width=width)
    if random_affine:
        g = gen(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            model.fc.weight.normal_(0, 0.5, generator=g)
    return model


def tiny_setup(name: str, seed: int = 0, **overrides) -> tuple[nn.Module, MixMethod]:
    """tiny_model(seed) and the method, set up on it (AutoMix, SAMix and AdAutoMix build their encoders there)."""
    model = tiny_model(seed)
    method = get_method(name, **overrides)
    method.setup(model, cfg=RunConfig(method=name, profile="test", device="cpu"))
    return model, method


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float bits as integers: equal only if every value, -0.0 and NaN included, is the same."""
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int64)


def share_of_x(x: torch.Tensor, x_mixed: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of pixels taken from x itself (all channels equal)."""
    return (x_mixed == x).all(dim=1).float().mean(dim=(1, 2))  # (N,)


def assert_mix_seeded_on_odd_batches(name: str, seed: int) -> None:
    """``name``'s ``mix`` gives the same batch from the same seed, at batch sizes 1 and 5, in the input's shape,
    with one (1, 1, H, W) mask for the batch."""
    for n in (1, 5):
        x, y = batch(n)
        method = get_method(name)
        a, b = method.mix(x, y, gen=gen(seed)), method.mix(x, y, gen=gen(seed))
        assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.y_b, b.y_b)
        assert a.x.shape == x.shape and a.mask.shape == (1, 1, H, W)


class HostReads(TorchDispatchMode):
    """Records aten ops that need tensor data on the host (``.item()``, ``bool()``, ``int()``) or
    make a tensor from host data (``torch.tensor``): on CUDA a sync or a pageable host-to-device copy."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class Ops(TorchDispatchMode):
    """Every aten op dispatched, views included; a non-view op is about one GPU kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- runs, configs and a tiny dataset
TEST = dict(profile="test", epochs=1, device="cpu")  # RunConfig(**TEST): one epoch of the test profile on the CPU
CPU = torch.device("cpu")
R18, RX50 = "resnet18", "resnext50"


def make_tiny(path: Path, seed: int = 0) -> Path:
    """3 classes x 4 train + 2 val images, wnids n90000000.. (sorted, so wnids.txt order = sorted order)."""
    return make_sample_dataset(path, seed=seed, num_classes=3, train_per_class=4, val_per_class=2)


# The fixtures of the tiny set: a test module imports all three it needs (``tiny`` and ``zip_data`` use ``pristine``);
# the module-scoped ones are then built once per module that imports them.
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("pristine") / "tiny")


@pytest.fixture(scope="module")
def zip_data(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageTensors:
    return load_tiny_imagenet(pristine, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny set that a test may change."""
    return Path(shutil.copytree(pristine, tmp_path / "tiny"))


def write_params(run_dir: Path, dataset: dict) -> dict:
    """A run folder whose params.json records `dataset`, as fit writes it; returns the identity."""
    identity = RunConfig(profile="test").identity(CPU, dataset)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.json").write_text(json.dumps({"identity": identity}))
    return identity


def old_dataset_record(data: ImageTensors) -> dict:
    """A dataset record as mixnb wrote it before the content key."""
    return {"root": data.root, "manifest_key": data.manifest_key, "train_images": len(data.y_train),
            "val_images": len(data.y_val), "classes": len(data.wnids)}
