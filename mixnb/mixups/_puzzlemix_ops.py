"""PuzzleMix solver pieces: the graph-cut energy, its per-sample CPU solve (gco's C library
called directly, or on a persistent process pool), and the greedy block transport. The method
itself is in ``puzzlemix.py``.

Energy (docs/protocol.md §2.10; the terms as OpenMixup's ``augments/puzzlemix.py`` builds them).
Each of the B x B blocks takes a label l in {0, ..., L-1}; label l shows x with weight
m_l = 1 - l / (L - 1) and the partner with 1 - m_l. For a labelling:

    E = sum_p U[p, l_p] + sum_{p~q} w_pq * V[l_p, l_q]
    U[p, l] = m_l * cost_x[p] + (1 - m_l) * cost_partner[p] + prior[l]
    V[l, l'] = (l - l')^2 / (L - 1)^2

cost_x[p] is the partner's normalised saliency lost by showing x (and vice versa), plus half
of the data-smoothness terms of p's edges; w_pq = beta' + the rest of the data term. The
float costs are scaled by 1000 * B^2 and truncated to integers as in the reference.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import math
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mixnb.mixups._helpers import eager

try:
    import gco  # gco-wrapper: only PuzzleMix's graph cut needs it, so the other methods import without it
except ImportError:
    gco = None

PRIOR_EPS = 1e-8  # inside -log(p + eps), as the reference
BETA_SCALE = 16  # the reference rescales beta to beta / block_num / 16


# ---------------------------------------------------------------------------------------------
# Graph-cut terms (batched, on x's device)


@dataclass(frozen=True)
class CutTerms:
    """Integer graph-cut costs for N grids, exactly as they go to ``gco.cut_grid_graph``."""

    unary: np.ndarray  # (N, B, B, L) int32
    pairwise: np.ndarray  # (L, L) int32, (l - l')^2
    cost_v: np.ndarray  # (N, B-1, B) int32, edge (r, c)-(r+1, c)
    cost_h: np.ndarray  # (N, B, B-1) int32, edge (r, c)-(r, c+1)


def block_saliency(saliency: Tensor, size: int) -> Tensor:
    """Saliency (N, H, W) averaged over size x size blocks and normalised to sum 1 per sample."""
    pooled = F.avg_pool2d(saliency[:, None].float(), size)[:, 0]  # (N, G, G)
    total = pooled.flatten(1).sum(1).clamp_min(torch.finfo(torch.float32).tiny)  # guard: all-zero saliency
    return pooled / total[:, None, None]


def boundary_gaps(top: Tensor, bottom: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean |difference| of the pooled cells facing each other across every block boundary,
    ``top`` filling the upper/left block and ``bottom`` the lower/right one.

    top, bottom: (N, C, G, G) pooled images, G = B * k. Returns (N, B-1, B) for vertical
    neighbours and (N, B, B-1) for horizontal ones.
    """
    n, _, g, _ = top.shape
    b = g // k
    gap_v = (top[:, :, k - 1 : -1 : k, :] - bottom[:, :, k::k, :]).abs().mean(1)  # (N, B-1, G)
    gap_h = (top[:, :, :, k - 1 : -1 : k] - bottom[:, :, :, k::k]).abs().mean(1)  # (N, G, B-1)
    return gap_v.reshape(n, b - 1, b, k).mean(-1), gap_h.reshape(n, b, k, b - 1).mean(2)


def cut_terms(
    x: Tensor, perm: Tensor, unary_sal: Tensor, prior_lam: Tensor, *, beta: float, gamma: float,
    eta: float, neigh_size: int, n_labels: int, mean: Tensor, std: Tensor,
) -> CutTerms:
    """Build the integer energy for every sample on x's device; one host copy at the end.

    x: (N, C, H, W) normalised; unary_sal: (N, B, B) block saliency of x (sums to 1);
    prior_lam: () the prior weight of x; mean, std: (1, C, 1, 1) to un-normalise x.
    """
    n, _, h, _ = x.shape
    b = unary_sal.shape[-1]
    k = h // b // neigh_size  # pooled cells per block side
    beta = beta / b / BETA_SCALE
    pooled = F.avg_pool2d(x.float() * std + mean, neigh_size)  # (N, C, B*k, B*k), un-normalised
    imgs = (pooled[perm], pooled)  # index 0: partner, 1: x (which image fills a block)
    gaps = [[boundary_gaps(imgs[a], imgs[c], k) for c in (0, 1)] for a in (0, 1)]
    cost_x = unary_sal[perm].clone()  # (N, B, B) showing x loses the partner's saliency
    cost_p = unary_sal.clone()
    weights = []
    for axis in (0, 1):  # 0: vertical edges (rows r, r+1), 1: horizontal edges (cols c, c+1)
        d = [[beta * gamma * gaps[a][c][axis] for c in (0, 1)] for a in (0, 1)]  # d[a][c]: a above/left, c below/right
        first = (slice(None), slice(0, -1)) if axis == 0 else (slice(None), slice(None), slice(0, -1))
        second = (slice(None), slice(1, None)) if axis == 0 else (slice(None), slice(None), slice(1, None))
        # Split the 2x2 edge table into per-node costs plus one symmetric weight (d01 + d10 - d00 - d11) / 2:
        # the sum reproduces d[a][c] up to a constant per edge.
        cost_x[first] += (d[1][0] + d[1][1]) / 2
        cost_p[first] += (d[0][0] + d[0][1]) / 2
        cost_x[second] += (d[0][1] + d[1][1]) / 2
        cost_p[second] += (d[0][0] + d[1][0]) / 2
        # clamp: a no-op for gamma <= 1 with images in [0, 1]; gco's swap needs weights >= 0
        weights.append((beta + (d[0][1] + d[1][0] - d[0][0] - d[1][1]) / 2).clamp_min(0))
    share = torch.linspace(1, 0, n_labels, device=x.device)  # (L,) weight of x per label
    lam = prior_lam.float()
    prior = torch.stack([  # binomial prior: label l shows x in j = L-1-l of L-1 draws of weight lam
        -torch.log(math.comb(n_labels - 1, j) * lam**j * (1 - lam) ** (n_labels - 1 - j) + PRIOR_EPS)
        for j in range(n_labels - 1, -1, -1)
    ]) * eta / b**2  # (L,), built on the device (no host copy)
    unary = share * cost_x[..., None] + (1 - share) * cost_p[..., None] + prior  # (N, B, B, L)
    large = 1000 * b**2  # the reference's integer scale
    # The reference hands gco float V = (l-l')^2/(L-1)^2, so gco multiplies the int32 unaries
    # by 1e5 (which overflows int32 at B=8 for a block holding > 1/3 of the saliency); we scale
    # everything by (L-1)^2 instead, giving the same energy up to a constant factor.
    packed = torch.cat([
        torch.trunc(large * unary).flatten(1) * (n_labels - 1) ** 2,
        torch.trunc(large * weights[0]).flatten(1),
        torch.trunc(large * weights[1]).flatten(1),
    ], 1).to(torch.int32).cpu().numpy()  # one host copy: a sync, inherent to the CPU solve
    sizes = np.cumsum([b * b * n_labels, (b - 1) * b])
    levels = np.arange(n_labels)
    return CutTerms(
        unary=np.ascontiguousarray(packed[:, : sizes[0]]).reshape(n, b, b, n_labels),
        pairwise=((levels[:, None] - levels[None, :]) ** 2).astype(np.int32),
        cost_v=np.ascontiguousarray(packed[:, sizes[0] : sizes[1]]).reshape(n, b - 1, b),
        cost_h=np.ascontiguousarray(packed[:, sizes[1] :]).reshape(n, b, b - 1),
    )


def grid_energy(labels: np.ndarray, unary: np.ndarray, pairwise: np.ndarray, cost_v: np.ndarray,
                cost_h: np.ndarray) -> int:
    """The energy gco minimises, for one (B, B) labelling (used by the tests)."""
    rows, cols = np.indices(labels.shape)
    data = unary[rows, cols, labels].sum()
    smooth_v = (cost_v * pairwise[labels[:-1], labels[1:]]).sum()
    smooth_h = (cost_h * pairwise[labels[:, :-1], labels[:, 1:]]).sum()
    return int(data + smooth_v + smooth_h)


# ---------------------------------------------------------------------------------------------
# The per-sample CPU solve: serial through gco's C library, or on a persistent process pool

# gco.cut_grid_graph itself is the pool's task and the worker set-up below is stdlib source run by
# ``exec``: workers never import mixnb (whose import costs seconds and ~1 GB), only gco + numpy.
_swap_cut = functools.partial(gco.cut_grid_graph, algorithm="swap") if gco is not None else None

# The C functions gco.cut_grid_graph calls, in its order, as declared in gco's cgco.h; every
# pointer is passed as a raw address (pygco's numpy prototypes check each argument, which is
# most of a small cut's cost).
_C_SIGNATURES: dict[str, tuple[type, ...]] = {
    "gcoCreateGeneralGraph": (ctypes.c_int, ctypes.c_int, ctypes.c_void_p),  # (sites, labels, int *handle)
    "gcoSetDataCost": (ctypes.c_int, ctypes.c_void_p),  # (handle, int unary[sites][labels])
    # (handle, int s1[E], int s2[E], int w[E], E)
    "gcoSetAllNeighbors": (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int),
    "gcoSetSmoothCost": (ctypes.c_int, ctypes.c_void_p),  # (handle, int cost[labels][labels])
    "gcoSwap": (ctypes.c_int, ctypes.c_int, ctypes.c_void_p),  # (handle, iterations, long long *energy)
    "gcoGetLabels": (ctypes.c_int, ctypes.c_void_p),  # (handle, int labels[sites])
    "gcoDestroyGraph": (ctypes.c_int,),  # (handle)
}


@functools.cache
def _gco_library() -> ctypes.CDLL:
    """gco-wrapper's compiled library, with the ``_C_SIGNATURES`` prototypes (its own keep pygco's).

    Private API, checked against gco-wrapper 3.0.9: ``gco.cgco._cgco`` is the library pygco
    loaded; ``test_gco_private_api_is_as_checked`` fails if it or the C signatures change.
    """
    from gco.cgco import _cgco

    lib = ctypes.CDLL(_cgco._name)  # the same loaded library (and graph registry), new function objects
    for name, argtypes in _C_SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
    return lib


@functools.cache
def grid_edges(b: int) -> tuple[np.ndarray, np.ndarray]:
    """(E,) intc first and second site of each edge of a B x B grid, E = 2B(B-1): the vertical
    edges then the horizontal ones, row-major, as ``gco.cut_grid_graph`` lists them (read-only)."""
    sites = np.arange(b * b, dtype=np.intc).reshape(b, b)
    first = np.concatenate([sites[:-1].ravel(), sites[:, :-1].ravel()])
    second = np.concatenate([sites[1:].ravel(), sites[:, 1:].ravel()])
    first.flags.writeable = second.flags.writeable = False
    return first, second


def _row_addresses(a: np.ndarray) -> list[int]:
    """The address of each row a[i] of a C-contiguous array."""
    return (a.ctypes.data + a.strides[0] * np.arange(len(a))).tolist()


def swap_cuts(terms: CutTerms) -> np.ndarray:
    """Labels (N, B*B) intc of ``gco.cut_grid_graph(unary, pairwise, cost_v, cost_h, algorithm="swap")``
    for every grid, bit for bit: the same C calls with the same arguments, without pygco's Python
    overhead per call. The terms must be integers, as ``cut_terms`` builds them."""
    if not all(np.issubdtype(a.dtype, np.integer) for a in (terms.unary, terms.pairwise, terms.cost_v, terms.cost_h)):
        raise TypeError("swap_cuts takes integer costs (pygco would rescale float ones)")
    n, b, _, n_labels = terms.unary.shape
    first, second = grid_edges(b)
    # pygco casts with .astype(np.intc); GCO keeps pointers to the unary and pairwise arrays, alive until destroy
    unary = np.ascontiguousarray(terms.unary.reshape(n, b * b * n_labels), dtype=np.intc)  # (N, B*B*L)
    weights = np.concatenate([terms.cost_v.reshape(n, -1), terms.cost_h.reshape(n, -1)], 1).astype(np.intc)  # (N, E)
    pairwise = np.ascontiguousarray(terms.pairwise, dtype=np.intc)  # (L, L)
    labels = np.empty((n, b * b), dtype=np.intc)
    handle, energy = ctypes.c_int(), ctypes.c_longlong()
    handle_at, energy_at = ctypes.addressof(handle), ctypes.addressof(energy)
    first_at, second_at, pairwise_at = first.ctypes.data, second.ctypes.data, pairwise.ctypes.data
    sites, n_edges = b * b, first.size
    c = _gco_library()
    create, set_data, set_edges, set_smooth = (
        c.gcoCreateGeneralGraph, c.gcoSetDataCost, c.gcoSetAllNeighbors, c.gcoSetSmoothCost
    )
    swap, get_labels, destroy = c.gcoSwap, c.gcoGetLabels, c.gcoDestroyGraph
    rows = zip(_row_addresses(unary), _row_addresses(weights), _row_addresses(labels))
    for unary_at, weights_at, labels_at in rows:  # the only per-sample loop in PuzzleMix: C calls only
        create(sites, n_labels, handle_at)
        graph = handle.value
        set_data(graph, unary_at)
        set_edges(graph, first_at, second_at, weights_at, n_edges)
        set_smooth(graph, pairwise_at)
        swap(graph, -1, energy_at)  # n_iter -1: until convergence, pygco's default
        get_labels(graph, labels_at)
        destroy(graph)
    return labels


def require_gco() -> None:
    """Fail with the fix when gco-wrapper is missing (PuzzleMix has no fallback, as the reference)."""
    if gco is None:
        raise RuntimeError("PuzzleMix needs the graph-cut package gco-wrapper (`import gco`): "
                           "pip install gco-wrapper (it is in pyproject.toml; `make install` installs it)")


_WORKER_INIT = """
import multiprocessing, multiprocessing.connection, os, signal, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Jupyter's interrupt signals the whole process group
parent = multiprocessing.parent_process()  # exit with the parent, even after a SIGKILL (else orphans linger)
threading.Thread(target=lambda: (multiprocessing.connection.wait([parent.sentinel]), os._exit(0)), daemon=True).start()
"""
_pool: ProcessPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (workers, pid of the process that made the pool)
_pool_lock = threading.Lock()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The module's pool of ``workers`` processes, made on first use and then reused.

    "spawn" workers: safe after CUDA init and in a Jupyter kernel (the task is an importable
    function); a script must guard its entry point with ``if __name__ == "__main__":``.
    A different size, or a call from a forked child, replaces the pool.
    """
    global _pool, _pool_key
    with _pool_lock:
        key = (workers, os.getpid())
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[1] == key[1]:
                _pool.shutdown(wait=True)
            _pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=exec, initargs=(_WORKER_INIT, {})
            )
            _pool_key = key
        return _pool


def shutdown_pool() -> None:
    """Stop the pool's workers (also runs at interpreter exit)."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool_key[1] == os.getpid():
            _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None


atexit.register(shutdown_pool)


@eager
def solve_cuts(terms: CutTerms, *, workers: int = 0) -> np.ndarray:
    """α-β-swap labels (N, B, B) int32 from gco, one grid per sample: ``swap_cuts`` in this
    process when ``workers`` is 0, else ``gco.cut_grid_graph`` on the persistent pool."""
    n, b = terms.unary.shape[:2]
    if workers == 0:
        labels = swap_cuts(terms)
    else:
        args = (terms.unary, [terms.pairwise] * n, terms.cost_v, terms.cost_h)
        labels = np.stack(list(worker_pool(workers).map(_swap_cut, *args, chunksize=math.ceil(n / workers))))
    return labels.reshape(n, b, b).astype(np.int32, copy=False)


# ---------------------------------------------------------------------------------------------
# Transport (batched, on the device)


def grid_cost(b: int, device: torch.device) -> Tensor:
    """(B*B, B*B) squared distance between block positions (row-major), over (B-1)^2."""
    idx = torch.arange(b * b, device=device)
    r, c = idx // b, idx % b
    return ((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2).float() / (b - 1) ** 2


@eager
def transport_sources(shown: Tensor, sal: Tensor, t_eps: float) -> tuple[Tensor, Tensor]:
    """Greedy transport of one image's blocks towards the blocks where it is shown.

    shown: (N, M) bool, block j of the mask shows this image; sal: (N, M) its normalised block
    saliency. cost[i, j] = t_eps * C[i, j] - sal[i] * shown[j] moves block i to position j.
    Each of sqrt(M) rounds: every source picks its cheapest position; per position the
    cheapest claimant wins (entries not claimed count as 0 in that contest, OpenMixup's code);
    losers pay +1 on that entry. Returns the last round's winners as src (N, M) int64, the
    source block per position, and keep (N, M) bool, False where no source won (left empty).

    The contest is held on the claims alone, (N, M) per round, never the (N, M, M) plan the reference builds: a
    position's lowest claim wins if it is below 0, or equal to 0 and made by a source before the first one that
    did not claim the position (argmin's first-index rule over the plan's zeros); else a source that did not claim
    it wins (src: the first such, as argmin picks) and the position stays empty. Kept out of a compiled step
    (``eager``): its sqrt(M) rounds would be unrolled into the graph (16 x 2 at the published 4-px cells), a long
    trace for ~10 small kernels a round.
    """
    n, m = shown.shape
    cost = t_eps * grid_cost(math.isqrt(m), sal.device) - sal[:, :, None] * shown[:, None, :].float()  # (N, M, M)
    sources = torch.arange(m, device=sal.device).expand(n, m)
    for _ in range(math.isqrt(m)):  # block_num rounds, as the reference
        claim = cost.argmin(-1)  # (N, M src): each source's cheapest position (argmin: the first on ties)
        claimed = cost.gather(-1, claim[..., None])[..., 0]  # (N, M src) the cost of that claim
        lowest = torch.full_like(claimed, math.inf).scatter_reduce_(-1, claim, claimed, "amin")  # (N, M dst)
        first_lowest = torch.full_like(claim, m).scatter_reduce_(  # (N, M dst): the first source claiming at lowest
            -1, claim, torch.where(claimed == lowest.gather(-1, claim), sources, m), "amin")
        differs = claim != claim[:, :1]  # source 0 is the first non-claimant of every position but its own claim
        after = torch.where(differs.any(-1), differs.int().argmax(-1), m)  # (N,) the first source claiming elsewhere
        first_free = torch.zeros_like(claim).scatter_(-1, claim[:, :1], after[:, None])  # (N, M dst); m: none
        keep = (lowest < 0) | ((lowest == 0) & (first_lowest < first_free)) | (first_free == m)
        src = torch.where(keep, first_lowest, first_free)
        cost.scatter_add_(-1, claim[..., None], (src.gather(-1, claim) != sources).to(cost.dtype)[..., None])  # losers
    return src, keep


def move_blocks(x: Tensor, src: Tensor, keep: Tensor) -> Tensor:
    """Block j of the result is block src[j] of x, or zeros where keep[j] is False (exact, no matmul)."""
    n, c, h, w = x.shape
    b = math.isqrt(src.shape[1])
    s = h // b
    blocks = x.reshape(n, c, b, s, b, s).permute(0, 2, 4, 1, 3, 5).reshape(n, b * b, c * s * s)
    moved = blocks.gather(1, src[:, :, None].expand(-1, -1, c * s * s))  # (N, M, C*s*s)
    moved = torch.where(keep[:, :, None], moved, torch.zeros((), dtype=x.dtype, device=x.device))
    return moved.reshape(n, b, b, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
