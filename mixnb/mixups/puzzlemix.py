"""PuzzleMix: per-sample block masks from a saliency-aware graph cut, then block transport.

Paper: Kim et al., "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup",
ICML 2020, https://arxiv.org/abs/2009.06962. Code: https://github.com/snu-mllab/PuzzleMix.
Protocol: docs/protocol.md §2.10 (prior alpha 1, beta 1.2, gamma 0.5, eta 0.2, neigh_size 4, 3 labels,
t_eps 0.8, transport on). The code that published the table (OpenMixup ``e81ed85``/``7bf8bcf``, Tiny
``mix_args`` from ``3fea614`` to ``a0c5840``; docs/publication.md) is the default: block count
2^randint(1, 5) in {2, 4, 8, 16}, 4-px transport cells (t_size 4) and the CIFAR mean/std to
un-normalise for the data smoothness (hard-coded in that code at every image size). OpenMixup HEAD
(``RunConfig.reference="head"``): {2, 4, 8}, t_size -1 (the graph-cut block), ImageNet mean/std at 64 px.

One step: (1) saliency sqrt(mean_c grad_x^2) of the clean soft-CE loss with the model in eval
mode (BN running stats; only the input gradient, no weight gradients); (2) one prior lam ~
Beta(alpha, alpha) and one partner permutation per batch, a block count from the CPU
generator; (3) per sample an α-β-swap graph cut over B x B blocks and 3 labels (mask values
{0, 0.5, 1}, the weight of x) of saliency, label/data smoothness and a binomial prior; (4) a
greedy transport moves each image's salient blocks into the blocks where it is shown; (5)
x_mixed = mask * x' + (1 - mask) * partner', lam = per-sample mean of the mask (the weight of
y_a = y), soft cross-entropy with that (N,) lam.

Where we follow OpenMixup's code (``augments/puzzlemix.py``) rather than the paper:
- one graph cut then one transport, no alternation; no clean-input loss, no adversarial noise
  (docs/protocol.md §7.6);
- transport: block_num rounds; in each position's contest, sources that did not claim it
  count as cost 0 (the later official code counts them as +1); the last round's winners are
  kept and positions without a winner become zeros;
- label smoothness beta rescaled to beta / block_num / 16, prior eta / block_num^2, costs
  scaled by 1000 * block_num^2 and truncated to integers.
Deviations, all in ``_puzzlemix_ops.py``: integer-only gco inputs (same energy up to a factor,
without the reference's int32 overflow), mean/std passed explicitly instead of guessed from
the image size (docs/protocol.md §2.10), a guard against an all-zero saliency map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.mixups import _puzzlemix_ops as ops
from mixnb.mixups._helpers import device_constant, eager, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, StepContext, StepOutput, check_alpha, mixed_cross_entropy

BLOCK_NUMS = (2, 4, 8, 16)  # 2 ** randint(1, 5): the published Tiny mix_args' block_num=5 (HEAD: 4, {2, 4, 8})
T_SIZE = 4  # px per transport cell, the published Tiny mix_args' (HEAD: -1, the graph-cut block)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the published code's de-normalisation at every image size (HEAD: ImageNet)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class PuzzleMixDraw:
    lam: Tensor  # () float32, the prior weight of x ("alpha" in the reference's graph cut)
    perm: Tensor  # (N,) int64
    block_num: int  # blocks per side (a host value: it sets shapes), from the CPU generator


@dataclass(frozen=True)
class PuzzleMixArgs:
    """Solver settings (see ``PuzzleMix`` for their meaning); validated here."""

    beta: float = 1.2
    gamma: float = 0.5
    eta: float = 0.2
    neigh_size: int = 4
    n_labels: int = 3
    t_eps: float = 0.8
    transport: bool = True
    t_size: int = T_SIZE
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "eta", "t_eps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PuzzleMix {name} must be >= 0, got {getattr(self, name)!r}")
        for name, low in (("neigh_size", 1), ("n_labels", 2), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"PuzzleMix {name} must be an int >= {low}, got {value!r}")
        t_size = self.t_size
        if isinstance(t_size, bool) or not isinstance(t_size, int) or not (t_size == -1 or t_size >= 1):
            raise ValueError(f"PuzzleMix t_size must be -1 (block size) or an int >= 1 pixels, got {t_size!r}")
        if not isinstance(self.transport, bool):
            raise ValueError(f"PuzzleMix transport must be True or False, got {self.transport!r}")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(
                f"PuzzleMix mean/std must have one entry per channel, std > 0; got {self.mean!r}, {self.std!r}"
            )


@eager
def sample_puzzlemix(
    n: int, *, gen: torch.Generator, cpu_gen: torch.Generator, alpha: float, block_nums: Sequence[int] = BLOCK_NUMS
) -> PuzzleMixDraw:
    lam = sample_beta(alpha, alpha, gen=gen)  # once per batch (docs/protocol.md §2.10)
    perm = random_partner(n, gen=gen)  # plain randperm in the reference
    block_num = block_nums[int(torch.randint(len(block_nums), (), generator=cpu_gen))]  # CPU draw: no device sync
    return PuzzleMixDraw(lam, perm, int(block_num))


def input_saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """sqrt(mean over channels of (d CE / d x)^2), (N, H, W) float32, from the model in eval
    mode; only the input gradient is taken, and the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():  # also callable from galleries
            x_in = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(x_in).float(), y)  # soft CE on a one-hot target is CE
            (grad,) = torch.autograd.grad(loss, x_in)
    finally:
        model.train(was_training)
    return grad.float().pow(2).mean(1).sqrt()  # (N, H, W)


def _block_sizes(x: Tensor, block_num: int, args: PuzzleMixArgs) -> tuple[int, int, int]:
    """(block, neigh, transport block) sizes in pixels, checked against the image."""
    h, w = x.shape[-2:]
    if h != w or h % block_num:
        raise ValueError(f"PuzzleMix needs square images divisible into {block_num} blocks, got {h}x{w}")
    block = h // block_num
    neigh = min(args.neigh_size, block)
    t_block = block if args.t_size == -1 else min(args.t_size, block)
    if block % neigh or block % t_block:
        raise ValueError(f"PuzzleMix neigh_size {neigh} and t_size {t_block} must divide the block size {block}")
    return block, neigh, t_block


@device_constant
def _per_channel(values: tuple[float, ...], device: torch.device) -> Tensor:
    """(1, C, 1, 1) constant on ``device``, copied there once (a per-step copy would block the host)."""
    return torch.tensor(values, device=device).view(1, -1, 1, 1)


def puzzle_mask(x: Tensor, saliency: Tensor, draw: PuzzleMixDraw, args: PuzzleMixArgs) -> Tensor:
    """The graph-cut mask (N, 1, B, B) float32, the weight of x per block, values k / (L-1).

    The seam for overlapping the CPU solve with device work: everything before
    ``ops.solve_cuts`` is batched on x's device, the solve runs on the host.
    """
    block, neigh, _ = _block_sizes(x, draw.block_num, args)
    mean, std = _per_channel(args.mean, x.device), _per_channel(args.std, x.device)
    terms = ops.cut_terms(
        x, draw.perm, ops.block_saliency(saliency, block), draw.lam, beta=args.beta, gamma=args.gamma,
        eta=args.eta, neigh_size=neigh, n_labels=args.n_labels, mean=mean, std=std,
    )
    labels = torch.from_numpy(ops.solve_cuts(terms, workers=args.workers)).to(x.device)  # (N, B, B) int32
    return (1 - labels.float() / (args.n_labels - 1))[:, None]


def apply_puzzle_mask(
    x: Tensor, saliency: Tensor, draw: PuzzleMixDraw, mask: Tensor, args: PuzzleMixArgs
) -> tuple[Tensor, Tensor, Tensor]:
    """Transport (if on) and mix; returns (x_mixed, lam (N,), mask (N, 1, H, W) the weight of x)."""
    _, _, t_block = _block_sizes(x, draw.block_num, args)
    h = x.shape[-1]
    x1, x2 = x.float(), x[draw.perm].float()
    if args.transport:
        t_num = h // t_block
        mask = mask.repeat_interleave(t_num // mask.shape[-1], -2).repeat_interleave(t_num // mask.shape[-1], -1)
        sal = ops.block_saliency(saliency, t_block).flatten(1)  # (N, M)
        src, keep = ops.transport_sources(mask.flatten(1) > 0, sal, args.t_eps)
        x1 = ops.move_blocks(x1, src, keep)
        src, keep = ops.transport_sources(mask.flatten(1) < 1, sal[draw.perm], args.t_eps)
        x2 = ops.move_blocks(x2, src, keep)
    lam = mask.flatten(1).mean(1)  # (N,) exact: block shares are multiples of 1/(L-1) over B^2 blocks
    scale = h // mask.shape[-1]
    mask = mask.repeat_interleave(scale, -2).repeat_interleave(scale, -1)  # (N, 1, H, W) nearest upsampling
    x_mixed = mask * x1 + (1 - mask) * x2
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():  # keep the loader's layout
        x_mixed = x_mixed.contiguous(memory_format=torch.channels_last)
    return x_mixed, lam, mask


def puzzlemix(x: Tensor, saliency: Tensor, draw: PuzzleMixDraw, args: PuzzleMixArgs) -> tuple[Tensor, Tensor, Tensor]:
    """PuzzleMix of x (N, C, H, W) with its partner x[perm]; returns (x_mixed, lam (N,), mask)."""
    return apply_puzzle_mask(x, saliency, draw, puzzle_mask(x, saliency, draw, args), args)


class PuzzleMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration of the prior lam, > 0 (protocol default 1).
    block_nums: blocks per side, one drawn uniformly per step; ints >= 2 (default (2, 4, 8, 16); HEAD (2, 4, 8)).
    beta: label smoothness, >= 0 (1.2; used as beta / block_num / 16); 0 is off.
    gamma: data (image) smoothness, >= 0 (0.5); 0 is off.
    eta: prior weight, >= 0 (0.2); 0 is off.
    neigh_size: pooling (px) of the images for the data smoothness, >= 1 (4; capped at the block).
    n_labels: mask levels, >= 2 (3: values {0, 0.5, 1}).
    t_eps: transport distance cost, >= 0 (0.8).
    transport: move salient blocks into shown positions (True); False is off.
    t_size: transport block size in px, -1 = the graph-cut block (HEAD), else capped at it (default 4).
    workers: processes for the per-sample graph cuts, 0 = serial in this process (default);
        the pool persists across steps (``_puzzlemix_ops.worker_pool``).
    mean, std: the statistics that un-normalise x for the data smoothness (default CIFAR's, as the published
        code; ImageNet's, the loader's, at HEAD).
    """

    name = "puzzlemix"

    def __init__(
        self, *, alpha: float = 1.0, block_nums: Sequence[int] = BLOCK_NUMS, beta: float = 1.2, gamma: float = 0.5,
        eta: float = 0.2, neigh_size: int = 4, n_labels: int = 3, t_eps: float = 0.8, transport: bool = True,
        t_size: int = T_SIZE, workers: int = 0, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        ops.require_gco()
        self.alpha = check_alpha(alpha)
        if isinstance(block_nums, (str, int)) or not block_nums or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 2 for b in block_nums
        ):
            raise ValueError(f"PuzzleMix block_nums must be a non-empty sequence of ints >= 2, got {block_nums!r}")
        self.block_nums = tuple(block_nums)
        self.args = PuzzleMixArgs(beta, gamma, eta, neigh_size, n_labels, t_eps, transport, t_size,
                                  tuple(mean), tuple(std), workers)

    def mix_with(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator,
                 cpu_gen: torch.Generator) -> MixedBatch:
        """The model's input-gradient saliency (one extra forward/backward), the draw, the mix: what the training
        step, the preview and ``mixnb.Mixer`` share."""
        saliency = input_saliency(model, x, y)  # (N, H, W)
        draw = sample_puzzlemix(x.shape[0], gen=gen, cpu_gen=cpu_gen, alpha=self.alpha, block_nums=self.block_nums)
        x_mixed, lam, mask = puzzlemix(x, saliency, draw, self.args)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, mask)

    def training_step(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:
        batch = self.mix_with(model, x, y, gen=ctx.gen, cpu_gen=ctx.cpu_gen)
        loss = mixed_cross_entropy(model(batch.x), batch.y_a, batch.y_b, batch.lam)
        return StepOutput(loss, {"loss": loss.detach(), "lam": batch.lam.mean().detach()})

    def preview(self, model: nn.Module, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        """One PuzzleMix batch; the block count comes from a CPU generator seeded from ``gen``."""
        seed = int(torch.randint(2**62, (), generator=gen, device=gen.device))  # a host read: galleries only
        cpu_gen = torch.Generator().manual_seed(seed)
        return self.mix_with(model, x, y, gen=gen, cpu_gen=cpu_gen)
