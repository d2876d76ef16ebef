"""Localisation (§5): Grad-CAM at layer4 (8x8 at 64 px) for the ground-truth class, bilinear to 64x64,
min-max normalised; the box of the largest 8-connected region of pixels >= 0.2 of the map's maximum (the
CAM paper's rule); top-1 loc = top-1 correct and IoU >= 0.5 with the val box, both boxes inclusive pixels
and the intersection clamped at 0 (Co-Mixup's IoU does not clamp, §5). GT-known loc = IoU >= 0.5 alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnb.analysis.run import Normalise, imagenet_normalise
from mixnb.analysis.settings import AnalysisSettings


def grad_cam(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (N, K), cam (N, h, w)) of normalised ``x``: Grad-CAM at the last stage (layer4 after its last
    ReLU; 8x8 at 64 px) for class ``target`` (N,): ReLU(sum_k mean_ij(dy_c/dA_k) A_k), min-max normalised per
    image as pytorch-grad-cam does ((cam - min) / (max + 1e-7) after the ReLU)."""
    with torch.no_grad():
        a = model.forward_stages(x)[-1]  # (N, F, h, w); no graph below layer4: the gradient stops there
    with torch.enable_grad():
        a.requires_grad_(True)
        logits = model.forward_head(a)
        g = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)[0]
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()  # (N, h, w)
    cam = cam - cam.flatten(1).amin(1)[:, None, None]
    return logits.detach(), cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-7)


def upsample_cam(cam: Tensor, size: int) -> Tensor:
    """(N, h, w) -> (N, size, size): bilinear, half-pixel centres (cv2.resize INTER_LINEAR, as
    pytorch-grad-cam), then min-max normalised again."""
    up = F.interpolate(cam[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.flatten(1).amin(1)[:, None, None]
    return up / (up.flatten(1).amax(1)[:, None, None] + 1e-7)


def largest_region_boxes(mask: Tensor) -> Tensor:
    """(N, 4) int64 x0, y0, x1, y1 (inclusive) of the largest 8-connected True region of each (N, H, W) mask,
    batched on its device. Each pixel's label starts as its own index; every round it takes the smallest label
    in its 3x3 neighbourhood, then the label its label's pixel holds (pointer jumping: O(log) rounds on a blob
    instead of its diameter), until nothing changes; a region's label is then its first pixel. An empty mask
    gives (0, 0, 0, 0) (Co-Mixup's no-contour box, §5)."""
    n, h, w = mask.shape
    big = h * w  # the background's label: never the smallest
    idx = torch.arange(big, device=mask.device).expand(n, big)
    label = torch.where(mask.flatten(1), idx, big)  # (N, HW) int64
    for _ in range(2 * big):  # a bound never reached: each round merges or stops
        pooled = -F.max_pool2d(-label.view(n, 1, h, w).float(), 3, 1, 1).view(n, big).long()
        new = torch.where(mask.flatten(1), pooled, big)
        padded = torch.cat([new, torch.full((n, 1), big, device=mask.device)], 1)  # index big -> big
        new = torch.minimum(new, padded.gather(1, new))  # jump: a label's own label is in the same region
        if torch.equal(new, label):
            break
        label = new
    size = torch.zeros(n, big + 1, device=mask.device).scatter_add_(1, label, torch.ones_like(label, dtype=torch.float))
    best = size[:, :big].argmax(1)  # (N,) the largest region's label
    region = (label == best[:, None]).view(n, h, w) & mask
    cols, rows = region.any(1), region.any(2)  # (N, W), (N, H)
    ar_w, ar_h = torch.arange(w, device=mask.device), torch.arange(h, device=mask.device)
    box = torch.stack([torch.where(cols, ar_w, w).amin(1), torch.where(rows, ar_h, h).amin(1),
                       torch.where(cols, ar_w, -1).amax(1), torch.where(rows, ar_h, -1).amax(1)], 1)
    return torch.where(mask.flatten(1).any(1)[:, None], box, torch.zeros_like(box))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N,) IoU of (N, 4) boxes x0, y0, x1, y1 with inclusive pixel coordinates (width = x1 - x0 + 1); the
    intersection's sides are clamped at 0 (Co-Mixup's are not, §5)."""
    a, b = a.long(), b.long()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1]) + 1).clamp(min=0)
    inter = iw * ih
    area = lambda t: (t[:, 2] - t[:, 0] + 1) * (t[:, 3] - t[:, 1] + 1)
    return inter / (area(a) + area(b) - inter)


def localisation(model: nn.Module, x: Tensor, y: Tensor, boxes: Tensor, s: AnalysisSettings,
                 gallery: Tensor, *, normalise: Normalise = imagenet_normalise) -> tuple[dict[str, Any], Tensor]:
    """(Top-1 and GT-known localisation (%) of (N, 3, H, W) uint8 ``x`` against its (N, 4) inclusive boxes with
    the 8x8 CAMs of the images ``gallery`` indexes, the (N, K) float32 logits of the same forward passes)."""
    top1_hit, iou_all, cams, all_logits = [], [], {}, []
    for i in range(0, len(x), s.batch_size):
        xb, yb = normalise(x[i:i + s.batch_size].float() / 255), y[i:i + s.batch_size]
        logits, cam = grad_cam(model, xb, yb)
        up = upsample_cam(cam, x.shape[-1])
        box = largest_region_boxes(up >= s.cam_threshold)  # the map's max is 1 after normalising
        iou = box_iou(box, boxes[i:i + s.batch_size].to(box.device))
        top1_hit.append(logits.argmax(1) == yb)
        iou_all.append(iou)
        all_logits.append(logits.float())
        for k in gallery[(gallery >= i) & (gallery < i + len(yb))].tolist():  # a handful of images
            cams[k] = (cam[k - i], box[k - i], float(iou[k - i]), int(logits[k - i].argmax()))
    hit, iou = torch.cat(top1_hit), torch.cat(iou_all)
    ok = iou >= s.iou_threshold
    whole = (boxes[:, 0] == 0) & (boxes[:, 1] == 0) & (boxes[:, 2] == x.shape[-1] - 1) & (boxes[:, 3] == x.shape[-2] - 1)
    return {
        "layer": "layer4 (after its last block's ReLU)", "cam_size": list(cams[min(cams)][0].shape) if cams else None,
        "target": "the ground-truth class (= the top-1 class wherever top-1 is correct)",
        "threshold": s.cam_threshold, "iou_threshold": s.iou_threshold,
        "rule": (f"box of the largest 8-connected region of the upsampled, min-max normalised CAM >= "
                 f"{s.cam_threshold} of its max; IoU with inclusive pixel boxes, intersection clamped at 0"),
        "top1_loc": 100 * float((ok & hit.to(ok.device)).double().mean()), "gt_known_loc": 100 * float(ok.double().mean()),
        "mean_iou": float(iou.double().mean()), "whole_image_boxes": 100 * float(whole.double().mean()),
        "images": len(x),
        "gallery": [{"index": int(k), "label": int(y[k]), "pred": v[3], "iou": v[2], "box": v[1].tolist(),
                     "gt_box": boxes[k].tolist(), "cam": [[round(float(c), 4) for c in row] for row in v[0].tolist()]}
                    for k, v in ((k, cams[k]) for k in gallery.tolist())],  # in class order
    }, torch.cat(all_logits)


def gallery_indices(y: Tensor, n: int) -> Tensor:
    """The first val image of each of the first n classes (the gallery's fixed images, as run_gallery)."""
    classes = [c for c in range(n) if bool((y == c).any())]
    return torch.stack([(y == c).nonzero()[0, 0] for c in classes]) if classes else torch.zeros(0, dtype=torch.long)
