"""Mixer: any mixnb method in your own training loop, called as timm's ``Mixup`` or torchvision's ``v2.MixUp``.

``mixer = Mixer("cutmix", num_classes=10)`` then ``x, y_soft = mixer(x, y)``: the mixed batch and its soft targets
(N, num_classes), each row summing to 1, built from the method's exact λ (the share of each image, after box
clipping, per sample where the method has one per sample). It adds what timm's ``Mixup`` (``timm/data/mixup.py``)
offers around its two methods: ``prob`` (mix a batch at all), ``switch_prob`` (one of several methods per batch;
OpenMixup's multi-mode), ``label_smoothing`` (timm's ``mixup_target``: smoothed one-hots, then
λ·y_a + (1 − λ)·y_b). Randomness is its own: a device generator for the method's draws (created on the first
input's device) and a host generator for the choices that steer Python (mix or not, which method, PuzzleMix's
block count), both seeded from ``seed`` as a mixnb run seeds its streams (``mixnb.rng.stream_seed``), or taken
from ``generator``. Sizes come from the input (FMix's mask is built at the batch's H x W unless ``size`` is set).

Methods, by what they need (docs/methods.md has each one's paper and settings):
- Input-space, nothing else: vanilla, mixup, cutmix, fmix, smoothmix, saliencymix (OpenCV's saliency), resizemix,
  gridmix, mixup+cutmix (the registry's switch).
- Input-space, reading a model: ``mixer(x, y, model=model)``. PuzzleMix takes the input-gradient saliency of
  ``model`` (any classifier returning logits; eval mode for that pass, no weight gradients). AttentiveMix+ takes
  its attention from a teacher: the file ``teacher_weights`` (or $MIXNB_ATTENTIVEMIX_TEACHER, an ImageNet
  ResNet-18 state_dict) when set, else ``model``'s last feature map, from ``model.forward_stages(x)[-1]``
  (mixnb.models), ``model.forward_features(x)`` (timm) or an ``nn.Sequential``'s last 4-D output, pooled to
  7 x 7. Pass a trained network as the teacher; ``loss`` uses the model being trained.
- Inside the model (no mixed input exists), through ``loss = mixer.loss(model, x, y)``, the method's own
  ``training_step``; each needs a hook of the model, which ``mixnb.models.ResNetCifar`` offers:
  ManifoldMix and AlignMix need ``forward(x, mix=None)`` that applies ``mix.apply(h)`` to the features after the
  stage ``mix.stage`` names, one of ``mixnb.models.STAGES`` ("input", "layer1" .. "layer4"; ManifoldMix uses its
  ``layers``, AlignMix those and "layer4"). AutoMix, SAMix and AdAutoMix learn their mixer (MixBlock, an EMA copy
  of the model, extra heads and losses) and need ``forward_stages(x, upto=4)`` returning the 4 stage maps (stage
  3 with ``num_features // 2`` channels), an int ``num_features`` and an ``nn.Linear`` ``fc`` on the pooled last
  stage (``model(x) == fc(pool(forward_stages(x)[-1]))``); build the optimizer from
  ``mixer.param_groups(model, lr=...)`` (the MixBlock has its own lr) and call ``mixer.on_step_end(model)`` after
  each optimizer step (the EMA update); ``mixer.setup(model, total_steps=...)`` gives the EMA schedule its length
  (unknown: the momentum stays at its start value). SAMix on a model that is not a mixnb backbone needs
  ``lam_mul_k`` (-1 as for ResNet-18). ``mixer(x, y)`` raises ``ModelHookError`` for these, in one line naming
  the hook; so does ``mixer.loss`` on a model without it. ``prob``, ``switch_prob`` and ``label_smoothing``
  apply to soft targets, so these methods take none of them.

``mixer.loss(model, x, y)`` works for every method (for input-space ones: mix, then ``SoftTargetCrossEntropy``).
``mixer.last`` tells what the last call did (``MixInfo``: the method, y_a, y_b, λ, mask). The Mixer is an
``nn.Module``: ``mixer.state_dict()`` holds the learned mixers' state (after ``setup``).

Example (runnable; more in ``Mixer``):

>>> import torch, mixnb
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.rand(8, 3, 32, 32, generator=g), torch.arange(8)
>>> mixer = mixnb.Mixer(["mixup", "cutmix"], num_classes=10, switch_prob=[0.5, 0.5], label_smoothing=0.1, seed=0)
>>> x_mixed, y_soft = mixer(x, y)
>>> y_soft.shape, bool(torch.allclose(y_soft.sum(1), torch.ones(8)))
(torch.Size([8, 10]), True)

Slightly over ~450 lines on purpose: the whole library API a researcher reads, with its docstring examples, in one
file.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.mixups import LOSS_DEFAULTS, REGISTRY, get_method, get_spec, takes_loss_settings
from mixnb.mixups.alignmix import AlignMix
from mixnb.mixups.attentivemix import GRID, TEACHER_ENV, AttentiveMix, Teacher
from mixnb.mixups.automix import AutoMix
from mixnb.mixups.base import MixedBatch, MixMethod, StepContext
from mixnb.mixups.manifoldmix import ManifoldMix
from mixnb.mixups.multimode import MultiMode
from mixnb.mixups.puzzlemix import PuzzleMix
from mixnb.models.resnet import Bottleneck, ResNetCifar
from mixnb.rng import stream_seed

_UNKNOWN_LENGTH = 2**62  # total_steps when not given: AutoMix's EMA schedule stays in its warm-up (start momentum)


class ModelHookError(TypeError):
    """A method that mixes inside the model was asked for a mixed input, or given a model without its hook."""


@dataclass(frozen=True)
class MixInfo:
    """What the last ``Mixer`` call did."""

    method: str  # the method that mixed the batch (a multi-mode's drawn mode); "" when ``prob`` left it unmixed
    y_a: Tensor  # (N,) int64, the label of each image, weight lam
    y_b: Tensor  # (N,) int64, its partner's label, weight 1 - lam
    lam: Tensor  # () or (N,) float32, the exact share of y_a
    mask: Tensor | None  # (N or 1, 1, H, W) float32 weight of x per pixel, where the method has one


# ----------------------------------------------------------------------------- soft targets and their loss


def mixup_target(y_a: Tensor, y_b: Tensor, lam: Tensor | float, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """timm's ``mixup_target`` with the partner's labels given: smoothed one-hots (1 - s + s/K on, s/K off), then
    lam * onehot(y_a) + (1 - lam) * onehot(y_b); lam () or (N,). Returns (N, K) float32."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    one_a = torch.full((y_a.shape[0], num_classes), off, device=y_a.device).scatter_(1, y_a.long()[:, None], on)
    one_b = torch.full((y_b.shape[0], num_classes), off, device=y_b.device).scatter_(1, y_b.long()[:, None], on)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=y_a.device)
    lam = lam.reshape(-1, 1) if lam.dim() else lam  # (N, 1) per sample
    return one_a * lam + one_b * (1 - lam)


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over N of -sum_k target_k log softmax(logits)_k, in float32 (timm's ``SoftTargetCrossEntropy``)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class SoftTargetCrossEntropy(nn.Module):
    """The loss for ``Mixer``'s soft targets: ``SoftTargetCrossEntropy()(model(x_mixed), y_soft)``."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_target_cross_entropy(logits, target)


# ----------------------------------------------------------------------------- model hooks

_FEATURE_HOOK = "forward(x, mix=None) that applies mix.apply(h) to the features after the stage mix.stage names ({})"
_STAGES_HOOK = ("forward_stages(x, upto=4) returning its 4 stage maps (stage 3 with num_features // 2 channels), "
                "an int num_features and an nn.Linear fc on the pooled last stage")


def _hook(method: MixMethod) -> tuple[str, str] | None:
    """(what the method does, the model hook it needs) for a method that mixes inside the model, else None."""
    if isinstance(method, AutoMix):  # SAMix and AdAutoMix too
        return "learns its mixer (a MixBlock, an EMA copy of the model, extra heads and losses)", _STAGES_HOOK
    if isinstance(method, (ManifoldMix, AlignMix)):
        layers = method.layers if isinstance(method, ManifoldMix) else (*method.manifold.layers, "layer4")
        return "mixes hidden features inside the model", _FEATURE_HOOK.format(", ".join(map(repr, layers)))
    if isinstance(method, MultiMode):
        return next(filter(None, map(_hook, method.modes)), None)
    return None


def _has_hook(model: nn.Module, hook: str) -> bool:
    if hook == _STAGES_HOOK:
        return (callable(getattr(model, "forward_stages", None))
                and isinstance(getattr(model, "num_features", None), int)
                and isinstance(getattr(model, "fc", None), nn.Linear))
    params = inspect.signature(model.forward).parameters.values()
    return any(p.name == "mix" or p.kind is p.VAR_KEYWORD for p in params)


def _backbone(model: nn.Module) -> str | None:
    """The registry backbone name of a mixnb ResNetCifar (SAMix's lam_mul_k="auto" picks by it), else None."""
    if not isinstance(model, ResNetCifar):
        return None
    return "resnext50" if isinstance(model.layer1[0], Bottleneck) else "resnet18"


class _LastFeatures(nn.Module):
    """AttentiveMix+'s attention source from any CNN: its last feature map (N, C, h, w), pooled to GRID x GRID,
    computed in eval mode (the model's mode is restored). See the module docstring for where the map comes from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            feat = self._features(x)
        finally:
            self.model.train(was_training)
        return F.adaptive_avg_pool2d(feat, GRID)  # (N, C, 7, 7)

    def _features(self, x: Tensor) -> Tensor:
        model = self.model
        if callable(getattr(model, "forward_stages", None)):
            return model.forward_stages(x)[-1]
        if callable(getattr(model, "forward_features", None)):
            feat = model.forward_features(x)
            if feat.dim() == 4:
                return feat
        last = None
        if isinstance(model, nn.Sequential):
            h = x
            for layer in model:
                h = layer(h)
                last = h if h.dim() == 4 else last
        if last is None:
            raise ModelHookError(
                f"attentivemix reads a teacher's last feature map: pass model= a network with forward_stages "
                f"(mixnb.models.ResNetCifar), forward_features (timm) or an nn.Sequential with a 4-D output, or "
                f"set teacher_weights= (or ${TEACHER_ENV}); got a {type(model).__name__}")
        return last


# ----------------------------------------------------------------------------- the Mixer


def _method_settings(names: Sequence[str], given: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's overrides from the Mixer's keyword arguments: a setting goes to every listed method that has
    it; ``<name>={...}`` to that method alone. Unknown keys fail in one line with the valid ones."""
    valid = {}
    for name in names:
        spec = get_spec(name)
        loss_keys = set(LOSS_DEFAULTS) if takes_loss_settings(spec.cls) else set()  # the benchmark's loss, not ours
        valid[name] = [k for k in spec.defaults if k not in loss_keys]
    per_method = {k: v for k, v in given.items() if k in valid}
    shared = {k: v for k, v in given.items() if k not in per_method}
    for name, own in per_method.items():
        if not isinstance(own, dict):
            raise ValueError(f"{name}= takes a dict of {name}'s settings ({', '.join(valid[name]) or 'none'}), "
                             f"got {own!r}")
    known = {k for keys in valid.values() for k in keys}
    unknown = sorted(set(shared) - known)
    if unknown and len(names) == 1:
        own = ", ".join(valid[names[0]]) or "none"
        raise ValueError(f"{names[0]} has no setting(s) {unknown}; its settings: {own}")
    if unknown:
        listed = "; ".join(f"{name}: {', '.join(keys) or 'none'}" for name, keys in valid.items())
        raise ValueError(f"no method here has the setting(s) {unknown}; valid settings: {listed}")
    settings = []
    for name in names:
        own = per_method.get(name, {})
        bad = sorted(set(own) - set(valid[name]))
        if bad:
            raise ValueError(f"{name} has no setting(s) {bad}; its settings: {', '.join(valid[name]) or 'none'}")
        settings.append({**{k: v for k, v in shared.items() if k in valid[name]}, **own})
    return settings


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class Mixer(nn.Module):
    """Mix a batch with any registered method and return soft targets (see the module docstring for each method).

    Args:
        method: a registry name (``mixnb.mixups.REGISTRY``: "mixup", "cutmix", "puzzlemix", ...) or several, one
            drawn per batch with ``switch_prob``.
        num_classes: K, the width of the soft targets, >= 1.
        prob: probability that a batch is mixed at all, in [0, 1] (1, off: always); an unmixed batch keeps x and
            gets the smoothed one-hot targets.
        switch_prob: with several methods, each one's probability per batch, >= 0, summing to 1 (None: uniform).
            timm's ``Mixup(switch_prob=p)`` is ``Mixer(["mixup", "cutmix"], switch_prob=[1 - p, p])``.
        label_smoothing: timm's smoothing s in [0, 1) (0: off): on-value 1 - s + s/K, off-value s/K, then mixed.
        seed: seeds the Mixer's own generators (None: a fresh seed, readable afterwards as ``mixer.seed``).
        generator: a ``torch.Generator`` on the inputs' device for the method's draws, instead of ``seed``; the
            host draws then come from it too (on the CPU) or from a generator seeded by one draw of it.
        **method_args: the method's settings, overriding the registry's defaults (``REGISTRY[name].defaults``),
            e.g. ``alpha=0.4``; with several methods a setting goes to each method that has it and
            ``cutmix={"alpha": 1.0}`` to one. An unknown key raises ValueError listing the valid ones.

    Example: the methods that read a model get it as ``model=``.

    >>> import torch, mixnb
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    >>> x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    >>> mixer = mixnb.Mixer("puzzlemix", num_classes=10, seed=0)
    >>> x_mixed, y_soft = mixer(x, y, model=model)
    >>> mixer.last.lam.shape  # PuzzleMix: one exact λ per image
    torch.Size([4])
    >>> loss = mixnb.SoftTargetCrossEntropy()(model(x_mixed), y_soft)

    ManifoldMix mixes inside the model: train it through ``loss``, on a model with the hook.

    >>> from mixnb.models import resnet18_cifar
    >>> mixer = mixnb.Mixer("manifoldmix", num_classes=10, seed=0)
    >>> loss = mixer.loss(resnet18_cifar(num_classes=10, width=4), x, y)
    >>> mixer(x, y)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mixnb.mixer.ModelHookError: manifoldmix mixes hidden features inside the model, ... mixnb.models.ResNetCifar ...
    """

    def __init__(self, method: str | Sequence[str], *, num_classes: int, prob: float = 1.0,
                 switch_prob: Sequence[float] | None = None, label_smoothing: float = 0.0, seed: int | None = None,
                 generator: torch.Generator | None = None, **method_args: Any) -> None:
        super().__init__()
        names = [method] if isinstance(method, str) else list(method)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"method must be a registry name or a non-empty list of them ({', '.join(REGISTRY)}), "
                             f"got {method!r}")
        for name in names:
            get_spec(name)  # unknown names fail with the valid ones
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.prob = _probability("prob", prob)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1) (0: off), got {label_smoothing!r}")
        if switch_prob is None:
            switch = [1 / len(names)] * len(names)
        else:
            switch = [_probability("switch_prob", p) for p in switch_prob]
            if len(switch) != len(names) or abs(sum(switch) - 1) > 1e-6:
                raise ValueError(f"switch_prob needs one probability per method ({len(names)}: {names}), summing "
                                 f"to 1; got {list(switch_prob)!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")

        self.settings = _method_settings(names, method_args)
        self.names, self.num_classes, self.label_smoothing = tuple(names), num_classes, float(label_smoothing)
        self.methods = nn.ModuleList(get_method(n, **s) for n, s in zip(names, self.settings))
        self.switch_prob = torch.tensor(switch, dtype=torch.float64)  # (M,) host
        hooks = [(n, _hook(m)) for n, m in zip(names, self.methods)]
        inside = [n for n, h in hooks if h is not None]
        if inside and len(names) > 1:
            raise ValueError(f"{inside[0]} mixes inside the model (mixer.loss only); it cannot switch with other "
                             f"methods per batch here")
        if inside and (self.prob != 1 or self.label_smoothing):
            raise ValueError(f"{inside[0]} trains through its own step (mixer.loss), without soft targets: prob and "
                             f"label_smoothing do not apply to it")
        for m in self.methods:
            if isinstance(m, AttentiveMix) and (m.teacher_weights or TEACHER_ENV in os.environ):
                m.setup(None, cfg=None)  # the file teacher, loaded once
        self.seed = seed
        self.generator = generator
        self._gens: tuple[torch.Generator, torch.Generator] | None = None
        self._sized: dict[tuple[int, int, int], MixMethod] = {}  # FMix-like methods built at an input's size
        self._set_up = False
        self.total_steps: int | None = None
        self.steps = 0  # training steps taken through ``loss`` (AdAutoMix alternates on it)
        self.last: MixInfo | None = None
        self.logs: dict[str, Tensor] = {}  # the last ``loss`` step's detached scalars

    def extra_repr(self) -> str:
        return (f"method={list(self.names) if len(self.names) > 1 else self.names[0]!r}, "
                f"num_classes={self.num_classes}, prob={self.prob}, switch_prob={self.switch_prob.tolist()}, "
                f"label_smoothing={self.label_smoothing}, seed={self.seed}")

    # --- randomness -------------------------------------------------------------------------------------

    def generators(self, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
        """(device generator for the method's draws, host generator for Python's choices), made on first use."""
        if self._gens is None:

            if self.generator is not None:
                gen = self.generator
                host = gen if gen.device.type == "cpu" else torch.Generator().manual_seed(
                    int(torch.randint(2**62, (), generator=gen, device=gen.device)))  # one host read, once
            else:
                if self.seed is None:
                    self.seed = torch.Generator().seed()  # non-deterministic; kept so the run can be replayed
                gen = torch.Generator(device).manual_seed(stream_seed(self.seed, "mix", 0, 0))
                host = torch.Generator().manual_seed(stream_seed(self.seed, "host", 0, 0))
            self._gens = (gen, host)
        gen = self._gens[0]
        if gen.device.type != device.type or (gen.device.index or 0) != (device.index or 0):
            raise ValueError(f"the Mixer's generator is on {gen.device}, the batch on {device}: use one Mixer per "
                             f"device (its generator is made on the first batch's device) or pass generator=")
        return self._gens

    # --- input-space mixing -----------------------------------------------------------------------------

    def forward(self, x: Tensor, y: Tensor, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """(x_mixed (N, C, H, W), y_soft (N, num_classes) float32) for x (N, C, H, W) and int labels y (N,);
        ``model`` is read by PuzzleMix (saliency) and AttentiveMix+ (teacher), ignored by the others."""
        if x.dim() != 4 or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.device != x.device:
            raise ValueError(f"Mixer takes x (N, C, H, W) and integer labels y (N,) on x's device, got x "
                             f"{tuple(x.shape)} on {x.device} and y {tuple(y.shape)} {y.dtype} on {y.device}")
        gen, host = self.generators(x.device)
        if self.prob < 1 and not (self.prob > 0 and float(torch.rand((), generator=host)) < self.prob):
            lam = torch.ones((), device=x.device)
            self.last = MixInfo("", y, y, lam, None)
            return x, mixup_target(y, y, lam, self.num_classes, self.label_smoothing)
        i = int(torch.multinomial(self.switch_prob, 1, generator=host)) if len(self.methods) > 1 else 0
        name, batch = self._mix(self.methods[i], i, x, y, model, gen, host)
        self.last = MixInfo(name, batch.y_a, batch.y_b, batch.lam, batch.mask)
        return batch.x, mixup_target(batch.y_a, batch.y_b, batch.lam, self.num_classes, self.label_smoothing)

    def _mix(self, method: MixMethod, i: int, x: Tensor, y: Tensor, model: nn.Module | None, gen: torch.Generator,
             host: torch.Generator) -> tuple[str, MixedBatch]:
        """(the name of the method that mixed, its batch)."""
        hook = _hook(method)
        if hook is not None:
            what, needs = hook
            raise ModelHookError(f"{method.name} {what}, so mixer(x, y) has no mixed input to return: use "
                                 f"loss = mixer.loss(model, x, y) with a model offering {needs}, as "
                                 f"mixnb.models.ResNetCifar does")
        if isinstance(method, MultiMode):  # the registry's switch: its own modes and probabilities
            mode = method.modes[method.draw_mode(host)]
            return self._mix(mode, -1, x, y, model, gen, host)
        if isinstance(method, PuzzleMix):  # PuzzleMix.training_step's mix: saliency, then the draw
            if model is None:
                raise ModelHookError("puzzlemix reads the model's input-gradient saliency: call "
                                     "mixer(x, y, model=model) with any classifier returning logits")
            return method.name, method.mix_with(model, x, y, gen=gen, cpu_gen=host)
        file_teacher = isinstance(method, AttentiveMix) and method.teacher is not None \
            and not isinstance(method.teacher.net, _LastFeatures)
        if isinstance(method, AttentiveMix) and not file_teacher:
            if model is None:
                raise ModelHookError(f"attentivemix needs a teacher: call mixer(x, y, model=teacher) or set "
                                     f"teacher_weights= (or ${TEACHER_ENV}) to an ImageNet ResNet-18 state_dict file")
            method.teacher = Teacher(_LastFeatures(model), f"the model passed ({type(model).__name__})")
        return method.name, self._at_size(method, i, x).mix(x, y, gen=gen)

    def _at_size(self, method: MixMethod, i: int, x: Tensor) -> MixMethod:
        """``method``, or for a method with a mask ``size`` the user did not set (FMix) a copy at x's H x W."""
        size = tuple(x.shape[-2:])
        if i < 0 or "size" not in get_spec(self.names[i]).defaults or "size" in self.settings[i] \
                or tuple(method.size) == size:
            return method
        key = (i, *size)
        if key not in self._sized:
            self._sized[key] = get_method(self.names[i], **self.settings[i], size=size)
        return self._sized[key]

    # --- training through the method's step -------------------------------------------------------------

    def setup(self, model: nn.Module, *, total_steps: int | None = None) -> None:
        """Build the method's model-dependent state once (AutoMix/SAMix/AdAutoMix: EMA encoder, heads, MixBlock on
        the model's device); ``total_steps``, the run's optimizer steps, sets the length of AutoMix's EMA schedule
        (None: it stays at its start momentum). ``loss`` and ``param_groups`` call it when needed."""
        if total_steps is not None:
            if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
                raise ValueError(f"total_steps must be an int >= 1 (the run's optimizer steps), got {total_steps!r}")
            self.total_steps = total_steps
        if self._set_up:
            return
        for method in self.methods:
            hook = _hook(method)
            if hook is not None and not _has_hook(model, hook[1]):
                raise ModelHookError(f"{type(model).__name__} lacks the hook {method.name} needs: {hook[1]}, as "
                                     f"mixnb.models.ResNetCifar has")
            if isinstance(method, AutoMix):
                method.setup(model, cfg=SimpleNamespace(backbone=_backbone(model)))
        self._set_up = True

    def param_groups(self, model: nn.Module, *, lr: float, min_lr: float = 0.0) -> list[dict]:
        """The optimizer's parameter groups: the model's, plus a learned mixer's own (AutoMix's MixBlock with its lr,
        its mix head), each with ``lr`` and ``min_lr`` (the cosine floor mixnb's loop reads; torch ignores it)."""
        self.setup(model)
        return self.methods[0].param_groups(model, lr=lr, min_lr=min_lr)

    def _context(self, device: torch.device, step: int) -> StepContext:
        gen, host = self.generators(device)
        return StepContext(gen=gen, cpu_gen=host, step=step, total_steps=self.total_steps or _UNKNOWN_LENGTH)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The training loss () float32 of one batch: the method's own ``training_step`` for the methods that mix
        inside the model, else ``SoftTargetCrossEntropy`` on ``model(x_mixed)`` and the soft targets."""
        if _hook(self.methods[0]) is None:
            x_mixed, y_soft = self(x, y, model=model)
            return soft_target_cross_entropy(model(x_mixed), y_soft)
        self.setup(model)
        out = self.methods[0].training_step(model, x, y, self._context(x.device, self.steps))
        self.steps += 1
        self.logs = out.logs
        return out.loss

    def on_step_end(self, model: nn.Module) -> None:
        """Call after each optimizer step: AutoMix/SAMix/AdAutoMix move their EMA encoder and heads; no-op else."""
        if self._set_up and self.steps > 0:
            device = next(model.parameters()).device
            self.methods[0].on_step_end(model, self._context(device, self.steps - 1))


__all__ = ["MixInfo", "Mixer", "ModelHookError", "SoftTargetCrossEntropy", "mixup_target",
           "soft_target_cross_entropy"]
