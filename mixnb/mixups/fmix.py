"""FMix: a binarised low-frequency noise image decides which pixels come from the partner.

Paper: Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", arXiv 2020,
https://arxiv.org/abs/2002.12047. Code: https://github.com/ecs-vlc/FMix (``fmix.py``).
Protocol: docs/protocol.md §2.8 (alpha 1, decay_power 3, size (64, 64), max_soft 0): a Gaussian
spectrum over the rfft grid (``fftfreq`` along rows, the first W // 2 + 1 ``fftfreq`` bins along
columns) scaled by 1 / max(f, 1 / max(H, W)) ** decay_power, inverse FFT to H x W; the top
``num`` pixels become 1, num = ceil(lam * HW) or floor(lam * HW) on a fair coin; one mask for
the batch; the partner is a plain permutation (``partner_tries`` 1, the code that published the table,
OpenMixup ``e81ed85`` ``openmixup/models/utils/augments/fmix.py``) or HEAD's no-repeat shuffle (11 draws,
docs/publication.md). x_mixed = mask * x + (1 - mask) * x[perm].

Deviations, each deliberate:
- lam is the mask's exact mean (the share of x), not the sampled Beta value the reference
  returns; the two differ by at most 1 / HW (1/4096 at 64 px) for a hard mask.
- ``spectrum="openmixup"`` (the default) reproduces the reference's code, not the paper:
  OpenMixup forms the complex spectrum as ``S[:, 0] + 1j * S[:, 1]`` on an (ch, H, W//2+1, 2)
  array, which takes rows 0 and 1 of the frequency grid as the real and imaginary parts, so only
  a (W//2+1) x 2 corner of coefficients is non-zero: the mask has at most one period along the
  width (in every stored version of ``openmixup/models/augments/fmix.py``). ``spectrum="paper"``
  is the full spectrum the paper describes. (The official ecs-vlc code has another quirk: its
  ``reshape`` interleaves real and imaginary parts into a real spectrum, making every mask
  point-symmetric. Neither is reproduced under "paper".)
- The reference min-max normalises the field before sorting; that leaves the ranking, and so
  the mask, unchanged, and is skipped. Ties in the field keep row-major order (stable sort).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mixnb.mixups._helpers import eager, gather_rows, random_partner, sample_beta
from mixnb.mixups.base import MixedBatch, MixMethod, check_alpha, check_partner_tries

SPECTRA = ("openmixup", "paper")


@dataclass(frozen=True)
class FMixDraw:
    lam: Tensor  # () float32, the sampled target share of ones
    perm: Tensor  # (N,) int64
    field: Tensor  # (H, W) float32, the low-frequency noise image
    ceil: Tensor  # () bool, round lam * HW up (else down)


@functools.lru_cache(maxsize=8)
def spectrum_weight(h: int, w: int, decay_power: float, spectrum: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """(weight, zero): the weight (2, H, W // 2 + 1) float32 of the noise's real and imaginary
    parts, 1 / max(f, 1 / max(H, W)) ** decay_power, 0 off "openmixup"'s corner; a () float32 0.
    Constants: built once per device, not every step (read-only)."""
    if spectrum not in SPECTRA:
        raise ValueError(f"FMix spectrum must be one of {SPECTRA}, got {spectrum!r}")
    fy = torch.fft.fftfreq(h, device=device)[:, None]  # (H, 1) cycles / px
    fx = torch.fft.rfftfreq(w, device=device)[None, :]  # (1, W//2+1); |f| as fftfreq's first bins
    scale = torch.sqrt(fy**2 + fx**2).clamp_min(1 / max(h, w)) ** -decay_power  # (H, W//2+1)
    weight = torch.zeros((2, h, w // 2 + 1), device=device)
    if spectrum == "paper":
        weight[:] = scale
    else:  # "openmixup": grid rows 0 / 1 become real / imaginary parts of a (W//2+1, 2) corner
        k = min(h, w // 2 + 1)
        weight[:, :k, :2] = scale[:2, :k, None]
    return weight, torch.zeros((), device=device)


def fmix_field(noise: Tensor, h: int, w: int, *, decay_power: float, spectrum: str = "openmixup") -> Tensor:
    """Low-frequency image (H, W) float32 from standard-normal ``noise`` (2, H, W // 2 + 1)
    (real, imaginary parts), scaled by 1 / max(f, 1 / max(H, W)) ** decay_power."""
    weight, zero = spectrum_weight(h, w, decay_power, spectrum, noise.device)
    # 0 + weight * noise, not the bare product: +0.0 (not -0.0) off the corner, as in a zero-filled spectrum
    part = torch.addcmul(zero, weight, noise)  # (2, H, W//2+1) float32
    spec = torch.complex(*part.unbind())  # (H, W//2+1) complex64
    # irfftn in two explicit steps: numpy/pocketfft ignore the imaginary part of the DC and
    # Nyquist columns of a non-Hermitian input, cuFFT leaves that undefined; zero it ourselves.
    rows = torch.fft.ifft(spec, dim=0)  # (H, W//2+1) complex64
    edges = slice(None, None, w // 2) if w % 2 == 0 else slice(0, 1)  # DC and, for even W, Nyquist
    torch.view_as_real(rows)[:, edges, 1].fill_(0)  # in place: 1 kernel, not a mask, a where and a complex
    return torch.fft.irfft(rows, n=w, dim=1)  # (H, W) float32


@eager
def sample_fmix(
    n: int, h: int, w: int, *, gen: torch.Generator, alpha: float, decay_power: float, spectrum: str = "openmixup",
    partner_tries: int = 1,
) -> FMixDraw:
    lam = sample_beta(alpha, alpha, gen=gen)
    noise = torch.randn((2, h, w // 2 + 1), generator=gen, device=gen.device)  # (2, H, W//2+1) float32
    field = fmix_field(noise, h, w, decay_power=decay_power, spectrum=spectrum)
    ceil = torch.rand((), generator=gen, device=gen.device) > 0.5
    perm = random_partner(n, gen=gen, tries=partner_tries)
    return FMixDraw(lam, perm, field, ceil)


def fmix_rank(field: Tensor, lam: Tensor, ceil: Tensor) -> tuple[Tensor, Tensor]:
    """(rank, num): rank (HW,) int64 of each pixel of ``field``, 0 for the highest (ties in
    row-major order), and num () float32, ceil or floor of lam * HW; the mask's ones are rank < num."""
    hw = field.numel()
    order = field.flatten().argsort(descending=True, stable=True)  # (HW,) on device: no host sync
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(hw, device=field.device))  # (HW,)
    target = lam.float() * hw  # exact: HW is a power of two at 64 px
    return rank, torch.where(ceil, target.ceil(), target.floor())


def fmix_mask(field: Tensor, lam: Tensor, ceil: Tensor, max_soft: float = 0.0) -> Tensor:
    """(H, W) float32 mask with the ``num`` highest pixels of ``field`` at 1, num = ceil or floor
    of lam * HW; with max_soft > 0 a linear 1 -> 0 ramp over the 2 * soft pixels around rank num."""
    rank, num = fmix_rank(field, lam, ceil)
    if max_soft == 0:
        return (rank < num).float().view_as(field)
    soft = (torch.minimum(lam, 1 - lam).clamp_max(max_soft) * field.numel()).floor()  # () ramp half-width in px
    ramp = 1 - (rank - (num - soft)) / (2 * soft - 1).clamp_min(1)  # 1 at rank num - soft, 0 at num + soft - 1
    return torch.where(rank < num - soft, 1.0, torch.where(rank >= num + soft, 0.0, ramp)).view_as(field)


def fmix(x: Tensor, draw: FMixDraw, *, max_soft: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """mask * x + (1 - mask) * x[perm]; returns (x_mixed, lam, mask) with lam the exact mean of
    the mask (the share of x) and mask (1, 1, H, W) float32."""
    h, w = draw.field.shape
    x_b = gather_rows(x, draw.perm)  # (N, C, H, W)
    if max_soft > 0:
        mask = fmix_mask(draw.field, draw.lam, draw.ceil, max_soft).view(1, 1, h, w)
        return mask * x + (1 - mask) * x_b, mask.mean(), mask
    rank, num = fmix_rank(draw.field, draw.lam, draw.ceil)
    keep = (rank < num).view(1, 1, h, w)  # (1, 1, H, W) bool
    mask = keep.float()
    # a binary mask selects: 1 kernel, not the blend's 4; the same pixels for finite x, in x's dtype
    return torch.where(keep, x, x_b), mask.mean(), mask


class FMix(MixMethod):
    """Args:
    alpha: Beta(alpha, alpha) concentration for the target share of x, > 0 (protocol default 1).
    decay_power: spectral decay exponent d in 1 / f**d, > 0; larger is smoother (protocol 3).
    size: mask (H, W) in px, each >= 2; must equal the batch's image size (protocol (64, 64)).
    max_soft: half-width of the soft edge as a fraction of HW, in [0, 0.5]; 0 (off) gives a
        binary mask (protocol 0).
    spectrum: "openmixup" (the reference's coefficient layout, see the module docstring) or
        "paper" (the full rfft spectrum).
    partner_tries: permutation draws to avoid self-pairs, an int >= 1; 1 = a plain permutation (the published
        code's, default), 11 = OpenMixup HEAD's.
    """

    name = "fmix"

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        size: Sequence[int] = (64, 64),
        max_soft: float = 0.0,
        spectrum: str = "openmixup",
        partner_tries: int = 1,
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        if not decay_power > 0:
            raise ValueError(f"FMix decay_power must be > 0, got {decay_power!r}")
        if len(size) != 2 or not all(isinstance(s, int) and s >= 2 for s in size):
            raise ValueError(f"FMix size must be two ints >= 2 (mask H, W in px), got {size!r}")
        if not 0 <= max_soft <= 0.5:
            raise ValueError(f"FMix max_soft must be in [0, 0.5], got {max_soft!r}")
        if spectrum not in SPECTRA:
            raise ValueError(f"FMix spectrum must be one of {SPECTRA}, got {spectrum!r}")
        self.decay_power, self.size, self.max_soft, self.spectrum = float(decay_power), tuple(size), max_soft, spectrum
        self.partner_tries = check_partner_tries(partner_tries)

    def mix(self, x: Tensor, y: Tensor, *, gen: torch.Generator) -> MixedBatch:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"FMix size {self.size} does not match the images' {tuple(x.shape[-2:])}")
        draw = sample_fmix(
            x.shape[0], *self.size, gen=gen, alpha=self.alpha, decay_power=self.decay_power, spectrum=self.spectrum,
            partner_tries=self.partner_tries,
        )
        x_mixed, lam, mask = fmix(x, draw, max_soft=self.max_soft)
        return MixedBatch(x_mixed, y, y[draw.perm], lam, mask)
