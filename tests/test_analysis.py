"""mixnb.analysis: calibration, attacks, occlusion, corruptions, CAM boxes, FLOPs, and analyze_run's file."""

import argparse
import dataclasses
import io
import json
import math
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mixnb.analysis as A
from mixnb.analysis.corruption_ops import _disk
from mixnb.analysis.run import chw_images, imagenet_normalise, seeded_subset
from mixnb import runs
from mixnb.config import RunConfig
from mixnb.data import IMAGENET_MEAN, IMAGENET_STD
from mixnb.report.analysis import beyond_table, cam_gallery, definitions, mce_table, plot_occlusion, plot_reliability

pytestmark = pytest.mark.xdist_group("analysis")  # make test -n: its module fixtures are built once, on one worker


# ----------------------------------------------------------------------------- a real tiny run (module-wide)
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mixnb.train import fit

    path = tmp_path_factory.mktemp("runs") / "vanilla-resnet18-s0"
    fit(RunConfig(method="vanilla", profile="test", epochs=2, device="cpu"), path, progress="none")
    return path


@pytest.fixture(scope="module")
def run(run_dir: Path) -> A.Run:
    return A.load_run(run_dir, "cpu")


@pytest.fixture(scope="module")
def analysed(run_dir: Path) -> dict:
    return A.analyze_run(run_dir, device="cpu")


def _logits_for(conf: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """2-class logits whose max softmax is ``conf`` (> 0.5), label right or wrong as ``correct``."""
    c = torch.tensor(conf, dtype=torch.float64)
    logits = torch.stack([c.log(), (1 - c).log()], 1)  # softmax = (c, 1 - c): class 0 predicted
    y = torch.tensor([0 if ok else 1 for ok in correct])
    return logits, y


# ----------------------------------------------------------------------------- calibration
def _two_bins() -> tuple[torch.Tensor, torch.Tensor]:
    # docs/analysis.md §1 test vector: 50 images at confidence 0.55, all right; 50 at 0.95, 60 % right
    return _logits_for([0.55] * 50 + [0.95] * 50, [True] * 50 + [True] * 30 + [False] * 20)


def test_calibration_hand_computed() -> None:
    logits, y = _two_bins()
    cal = A.calibration(logits, y, n_bins=15)
    assert cal["ece"] == pytest.approx(100 * (0.5 * 0.45 + 0.5 * 0.35))  # 40 %
    assert cal["mce"] == pytest.approx(45.0)
    nll = (50 * -math.log(0.55) + 30 * -math.log(0.95) + 20 * -math.log(0.05)) / 100
    brier = (50 * 2 * 0.45**2 + 30 * 2 * 0.05**2 + 20 * 2 * 0.95**2) / 100  # sum over the 2 classes
    assert cal["nll"] == pytest.approx(nll) and cal["brier"] == pytest.approx(brier)
    per_image_nll = [-math.log(0.55)] * 50 + [-math.log(0.95)] * 30 + [-math.log(0.05)] * 20
    per_image_brier = [2 * 0.45**2] * 50 + [2 * 0.05**2] * 30 + [2 * 0.95**2] * 20
    assert cal["nll_se"] == pytest.approx(statistics.stdev(per_image_nll) / 10)  # sample std / sqrt(100)
    assert cal["brier_se"] == pytest.approx(statistics.stdev(per_image_brier) / 10)
    assert cal["top1"] == pytest.approx(80.0)
    full = [b for b in cal["bins"] if b["count"]]
    assert [(b["count"], round(b["confidence"], 6), round(b["accuracy"], 6)) for b in full] == [(50, 0.55, 1.0),
                                                                                                 (50, 0.95, 0.6)]
    assert sum(b["count"] for b in cal["bins"]) == 100 and len(cal["bins"]) == 15


def _openmixup_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = 10) -> float:
    """OpenMixup's ECE (docs/analysis.md §1): per-bin accuracies and confidences sorted independently, then paired."""
    acc, cf, cnt = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    for m in range(n_bins):
        inside = (conf > m / n_bins) & (conf <= (m + 1) / n_bins)
        cnt[m] = int(inside.sum())
        if cnt[m]:
            acc[m], cf[m] = float(correct[inside].double().mean()), float(conf[inside].mean())
    return float((cnt * np.abs(np.sort(acc) - np.sort(cf))).sum() / cnt.sum())


def test_openmixup_ece_sorting_bug_is_not_reproduced() -> None:
    logits, y = _two_bins()
    conf, pred = logits.softmax(1).max(1)
    ours = A.calibration(logits, y, n_bins=10)["ece"] / 100
    assert ours == pytest.approx(0.400)
    assert _openmixup_ece(conf, pred == y) == pytest.approx(0.025)  # the same data, bins paired after sorting


def test_ece_mce_match_torchmetrics() -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 7, generator=gen) * 2
    y = torch.randint(0, 7, (2000,), generator=gen)
    cal = A.calibration(logits, y, n_bins=15)
    probs = logits.softmax(1)
    for norm, key in (("l1", "ece"), ("max", "mce")):
        ref = multiclass_calibration_error(probs, y, num_classes=7, n_bins=15, norm=norm)
        assert cal[key] / 100 == pytest.approx(float(ref), abs=1e-5)


def test_reliability_bins_are_right_closed() -> None:
    conf = torch.tensor([0.25, 0.5, 0.5 + 1e-6, 1.0, 1e-3])  # edges 0.25, 0.5, 0.75 are exact in binary
    bins = A.reliability_bins(conf, torch.ones(5, dtype=torch.bool), 4)
    assert bins["count"].tolist() == [2, 1, 1, 1]  # (0, .25] holds .25, (.25, .5] holds .5, (.75, 1] holds 1


# ----------------------------------------------------------------------------- attacks
class _Recorder:
    """A model wrapper that keeps the normalised inputs it saw."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.seen = model, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach())
        return self.model(x)


def _loss(run: A.Run, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(run.model(imagenet_normalise(x)), y))


def test_fgsm_raises_the_loss_within_eps_in_pixel_space(run: A.Run) -> None:
    x = chw_images(run.data.x_val, run.device).float() / 255
    y = run.data.y_val
    rec = _Recorder(run.model)
    x_adv = A.fgsm(rec, x, y, eps=8 / 255)
    assert _loss(run, x_adv, y) > _loss(run, x, y) + 1e-3
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # the model saw the normalised clean image: de-normalised with the run's statistics it is x
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(rec.seen[0] * std + mean, x, atol=1e-5)
    assert (A.MEAN, A.STD) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))  # what fit's DeviceLoader uses


def test_pgd_stays_in_the_eps_box_and_beats_clean(run: A.Run) -> None:
    x = chw_images(run.data.x_val, run.device).float() / 255
    y = run.data.y_val
    gen = torch.Generator().manual_seed(0)
    x_adv = A.pgd(run.model, x, y, eps=8 / 255, step=2 / 255, steps=5, gen=gen)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert _loss(run, x_adv, y) > _loss(run, x, y)
    again = A.pgd(run.model, x, y, eps=8 / 255, step=2 / 255, steps=5, gen=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, again)  # seeded random start


# ----------------------------------------------------------------------------- occlusion
def test_occlusion_masks_grow_and_are_seeded() -> None:
    fr = (0.0, 0.1, 0.5, 0.9)
    m = A.occlusion_masks(5, 64, 8, fr, gen=torch.Generator().manual_seed(1))
    assert m.shape == (4, 5, 1, 8, 8)
    assert m.flatten(2).sum(2).tolist() == [[round(64 * r)] * 5 for r in fr]  # 0, 6, 32, 58 patches
    assert bool((m[:-1] <= m[1:]).all())  # each fraction's patches hold the previous ones
    assert torch.equal(m, A.occlusion_masks(5, 64, 8, fr, gen=torch.Generator().manual_seed(1)))
    assert A.patch_mask(m, 8).shape == (4, 5, 1, 64, 64)


def test_occlusion_at_zero_is_clean_accuracy(run: A.Run) -> None:
    x, y = chw_images(run.data.x_val, run.device), run.data.y_val
    s = A.settings_for("test")
    occ = A.occlusion(run.logits, x, y, s)
    clean = 100 * float((A.predict(run.logits, x, batch_size=64).argmax(1) == y).double().mean())
    assert occ["fractions"][0] == 0 and occ["top1"][0] == pytest.approx(clean)
    assert occ["auc"] == pytest.approx(A.curve_auc(occ["fractions"], occ["top1"]))
    assert A.curve_auc([0, 0.5, 1], [100, 50, 0]) == pytest.approx(50)


# ----------------------------------------------------------------------------- corruptions
def _val(run: A.Run, n: int = 6) -> torch.Tensor:
    return chw_images(run.data.x_val[:n], torch.device("cpu"))


def test_gaussian_noise_variance_rises_with_severity() -> None:
    x = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)  # mid-grey: no clipping
    var = [float(((A.corrupt(x, "gaussian_noise", s).float() - 128) / 255).var()) for s in range(1, 6)]
    assert var == sorted(var) and len(set(var)) == 5
    sigma = [0.04, 0.08, 0.12, 0.15, 0.18]  # docs/analysis.md §4.2, severities 1..5
    raw = [float((A.gaussian_noise(x, c, gen=torch.Generator().manual_seed(0)) / 255 - 128 / 255).std()) for c in sigma]
    assert raw == pytest.approx(sigma, rel=0.03)


def test_contrast_and_blur_are_monotone(run: A.Run) -> None:
    x = _val(run)
    std = [float(A.corrupt(x, "contrast", s).float().std()) for s in range(1, 6)]
    assert std == sorted(std, reverse=True)
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
    edges = [float(F.conv2d(A.corrupt(x, "gaussian_blur", s).float().flatten(0, 1)[:, None], lap).abs().mean())
             for s in range(1, 6)]
    assert edges == sorted(edges, reverse=True)


def test_corruptions_match_their_library_twins(run: A.Run) -> None:
    from scipy.ndimage import zoom as scizoom
    from skimage.color import hsv2rgb, rgb2hsv
    from skimage.filters import gaussian

    x, xn = _val(run), run.data.x_val[:6].numpy()
    g = torch.Generator()

    def same(ours: torch.Tensor, ref: np.ndarray, tol: float = 1e-3) -> None:
        assert np.abs(ours.permute(0, 2, 3, 1).numpy().astype(np.float64) - ref).max() <= tol

    same(A.gaussian_blur(x, 1.25, gen=g), np.stack([np.clip(gaussian(i / 255, sigma=1.25, channel_axis=-1), 0, 1) * 255
                                                    for i in xn]))
    k = _disk(2.5, 0.01).numpy()
    same(A.defocus_blur(x, (2.5, 0.01), gen=g), np.stack([np.clip(np.stack(
        [cv2.filter2D((i / 255.0)[..., d].astype(np.float32), -1, k) for d in range(3)], -1), 0, 1) * 255 for i in xn]))

    def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:  # the reference's
        ch = int(np.ceil(64 / z))
        top = (64 - ch) // 2
        img = scizoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - 64) // 2
        return img[trim:trim + 64, trim:trim + 64]

    zs = A.CORRUPTIONS["zoom_blur"][1][2]
    same(A.zoom_blur(x, zs, gen=g), np.stack([np.clip((i / 255 + sum(clipped_zoom((i / 255).astype(np.float32), z)
                                                                     for z in zs)) / (len(zs) + 1), 0, 1) * 255
                                              for i in xn]))

    def hsv(i: np.ndarray, ch: int, f) -> np.ndarray:
        h = rgb2hsv(i / 255)
        h[..., ch] = f(h[..., ch])
        return np.clip(hsv2rgb(h), 0, 1) * 255

    same(A.brightness(x, 0.4, gen=g), np.stack([hsv(i, 2, lambda v: np.clip(v + 0.4, 0, 1)) for i in xn]))
    same(A.saturate(x, (5, 0.1), gen=g), np.stack([hsv(i, 1, lambda v: np.clip(v * 5 + 0.1, 0, 1)) for i in xn]))
    pil = np.stack([np.asarray(Image.fromarray(i).resize((38, 38), Image.BOX).resize((64, 64), Image.BOX)) for i in xn])
    same(A.pixelate(x, 0.6, gen=g).float(), pil, tol=1)  # Pillow's fixed point: within 1 level

    def pil_jpeg(i: np.ndarray, q: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(i).save(buf, "JPEG", quality=q)
        return np.asarray(Image.open(buf))

    same(A.jpeg_compression(x, 40, gen=g).float(), np.stack([pil_jpeg(i, 40) for i in xn]))  # the same codec: exact


def test_glass_and_elastic_match_the_reference_loops(run: A.Run) -> None:
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    x, xn = _val(run, 3), run.data.x_val[:3].numpy()
    g = torch.Generator().manual_seed(0)
    c = (0.7, 2, 1)
    pos = A.glass_positions(64, 64, 2)
    off = torch.randint(-2, 2, (1, len(pos), 3, 2), generator=g)
    refs = []
    for k, im in enumerate(xn):  # the reference's loop, its "swap" of two NumPy views included
        y = np.uint8(gaussian(im / 255.0, sigma=c[0], channel_axis=-1) * 255)
        for p, (h, w) in enumerate(pos):
            dx, dy = off[0, p, k].tolist()
            y[h, w], y[h + dy, w + dx] = y[h + dy, w + dx], y[h, w]
        refs.append(np.clip(gaussian(y / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255)
    ours = A.glass_blur_apply(x, c, off).permute(0, 2, 3, 1).numpy()
    assert np.mean(np.abs(ours - np.stack(refs)) < 1e-2) > 0.999  # float32 vs float64 floors: a rare level

    c = A.CORRUPTIONS["elastic_transform"][1][2]
    shift = torch.rand(3, 3, 2, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.rand(3, 2, 64, 64, generator=g, dtype=torch.float64) * 2 - 1
    refs = []
    for k, im in enumerate(xn):
        img = im.astype(np.float32) / 255
        pts1 = np.float32([[53, 53], [53, 11], [11, 11]])
        m = cv2.getAffineTransform(pts1, (pts1 + shift[k].numpy() * c[2]).astype(np.float32))
        img = cv2.warpAffine(img, m, (64, 64), borderMode=cv2.BORDER_REFLECT_101)
        dx, dy = (gaussian(noise[k, i].numpy(), c[1], mode="reflect", truncate=3) * c[0] for i in (0, 1))
        xx, yy, zz = np.meshgrid(np.arange(64), np.arange(64), np.arange(3))
        ind = (yy + dy[..., None]).reshape(-1, 1), (xx + dx[..., None]).reshape(-1, 1), zz.reshape(-1, 1)
        refs.append(np.clip(map_coordinates(img, ind, order=1, mode="reflect").reshape(64, 64, 3), 0, 1) * 255)
    ours = A.elastic_apply(x, c, shift, noise).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - np.stack(refs)).max() < 0.01  # cv2's 5-bit interpolation weights


def test_every_generated_corruption_runs(run: A.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (230 + 10 * i, 240, 3), dtype=np.uint8))
    monkeypatch.setenv(A.FROST_ENV, str(tmp_path))
    x = _val(run, 4)
    for name in A.CORRUPTIONS:
        if A.skip_reason(name) is not None:
            assert name in ("motion_blur", "snow") and "ImageMagick" in A.skip_reason(name)
            continue
        for s in (1, 4):  # spatter: water at 1, mud at 4
            out = A.corrupt(x, name, s, seed=3)
            assert out.shape == x.shape and out.dtype == torch.uint8, name
            assert not torch.equal(out, x), name
            assert torch.equal(out, A.corrupt(x, name, s, seed=3)), name  # seeded
    monkeypatch.delenv(A.FROST_ENV)
    assert "MIXNB_FROST" in A.skip_reason("frost")
    with pytest.raises(ValueError, match="snow cannot be generated"):
        A.corrupt(x, "snow", 1)


def test_generated_set_is_seeded_and_cached(run: A.Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIXNB_CACHE", str(tmp_path))  # a cold cache, whatever an earlier session left in $MIXNB_CACHE
    s = A.AnalysisSettings(corruptions=("gaussian_noise", "contrast", "motion_blur"), corruption_images=5,
                           corruption_severities=(2, 5), seed=7)
    first = A.generated_corruptions(run.data, s)
    assert first["x"].shape == (2, 2, 5, 3, 64, 64) and first["x"].dtype == torch.uint8
    assert first["names"] == ["gaussian_noise", "contrast"] and "ImageMagick" in first["skipped"]["motion_blur"]
    monkeypatch.setattr(A.corruptions, "corrupt", lambda *a, **k: pytest.fail("regenerated instead of reading the cache"))
    second = A.generated_corruptions(run.data, s)
    assert second["cached"] and torch.equal(first["x"], second["x"]) and torch.equal(first["idx"], second["idx"])
    monkeypatch.setattr(A.corruptions, "corrupt", A.corruption_ops.corrupt)
    other = A.generated_corruptions(run.data, dataclasses.replace(s, seed=8))
    assert not other["cached"] and not torch.equal(first["x"], other["x"])


def test_official_folder_is_read_through_this_datasets_wnids(run: A.Run, tmp_path: Path) -> None:
    data = run.data
    root = tmp_path / "Tiny-ImageNet-C"
    for sev in ("1", "3"):
        for i in range(len(data.y_val)):
            folder = root / "gaussian_noise" / sev / data.wnids[int(data.y_val[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.x_val[i].numpy()).save(folder / f"val_{i}.JPEG", quality=95)
    s = A.settings_for("test")
    out = A.official_corruptions(run.logits, root, data, s, run.device)
    files = sorted((root / "gaussian_noise" / "1").rglob("*.JPEG"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    ys = torch.tensor([data.wnids.index(f.parent.name) for f in files])
    pred = A.predict(run.logits, chw_images(x, run.device), batch_size=64).argmax(1)
    expect = 100 * float((pred == ys).double().mean())
    assert out["top1"]["gaussian_noise"]["1"] == pytest.approx(expect)
    assert out["images"]["gaussian_noise"] == {"1": len(data.y_val), "3": len(data.y_val)}
    assert out["mean_top1_common"] == pytest.approx(out["mean_top1"])


# ----------------------------------------------------------------------------- CAM and boxes
def test_grad_cam_is_cam_with_negatives_clipped(run: A.Run) -> None:
    x = imagenet_normalise(chw_images(run.data.x_val[:5], run.device).float() / 255)
    y = run.data.y_val[:5]
    logits, cam = A.grad_cam(run.model, x, y)
    assert cam.shape == (5, 8, 8) and float(cam.min()) >= 0 and float(cam.max()) <= 1
    assert torch.allclose(logits, run.model(x), atol=1e-5)
    with torch.no_grad():  # docs/analysis.md §5: GAP + linear head, so Grad-CAM = ReLU(CAM) / (hw), then min-max
        feats = run.model.forward_stages(x)[-1]
        ref = F.relu(torch.einsum("nk,nkij->nij", run.model.fc.weight[y], feats)) / 64  # hw = 8 x 8
        ref = ref - ref.flatten(1).amin(1)[:, None, None]
        ref = ref / (ref.flatten(1).amax(1)[:, None, None] + 1e-7)
    assert torch.allclose(cam, ref, atol=1e-4)
    up = A.upsample_cam(cam, 64)
    lit = cam.flatten(1).amax(1) > 0
    assert up.shape == (5, 64, 64) and up[lit].amax(dim=(1, 2)).tolist() == pytest.approx([1.0] * int(lit.sum()), abs=1e-5)


def test_grad_cam_matches_pytorch_grad_cam(run: A.Run) -> None:
    """Against the library itself where it is installed: pytorch-grad-cam requires opencv-python, which would
    overwrite the project's opencv-contrib-python-headless (SaliencyMix needs its saliency module), so it is not a
    dependency (`pip install --no-deps grad-cam ttach` into a scratch folder runs it)."""
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = imagenet_normalise(chw_images(run.data.x_val[:4], run.device).float() / 255)
    y = run.data.y_val[:4]
    with gc.GradCAM(model=run.model, target_layers=[run.model.layer4[-1]]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in y])  # (N, 64, 64)
    ours = A.upsample_cam(A.grad_cam(run.model, x, y)[1], 64)
    assert np.abs(ours.numpy() - ref).max() < 1e-3
    run.model.eval()


def test_box_of_the_largest_region_hand_made() -> None:
    m = torch.zeros(3, 64, 64, dtype=torch.bool)
    m[0, 2:5, 3:7] = True  # 12 px
    m[0, 40:50, 10:20] = True  # 100 px: the largest
    m[0, 50, 20] = True  # touches (49, 19) diagonally: 8-connected, joins it
    m[1, 0, 0] = True  # a single pixel: x0 = x1 = 0
    boxes = A.largest_region_boxes(m)
    assert boxes.tolist() == [[10, 40, 20, 50], [0, 0, 0, 0], [0, 0, 0, 0]]  # x0, y0, x1, y1 inclusive; 2: empty


def test_largest_region_matches_opencv_on_random_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    blobs = F.interpolate(torch.rand(40, 1, 8, 8, generator=gen), size=(64, 64), mode="bilinear")[:, 0]
    mask = blobs > 0.6
    ours = A.largest_region_boxes(mask)
    for i in range(len(mask)):
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask[i].numpy().astype(np.uint8), connectivity=8)
        if n == 1:
            assert ours[i].tolist() == [0, 0, 0, 0]
            continue
        area = stats[1:, cv2.CC_STAT_AREA]
        if (area == area.max()).sum() > 1:
            continue  # a tie: either region is right
        x, y, w, h = stats[1 + area.argmax(), :4]
        assert ours[i].tolist() == [x, y, x + w - 1, y + h - 1]


def test_iou_inclusive_and_clamped() -> None:
    a = torch.tensor([[0, 0, 9, 9], [0, 0, 0, 0], [0, 0, 9, 9], [0, 0, 9, 9]])
    b = torch.tensor([[0, 0, 9, 9], [0, 0, 1, 1], [20, 20, 29, 29], [5, 0, 14, 9]])
    iou = A.box_iou(a, b)
    assert iou.tolist() == pytest.approx([1.0, 0.25, 0.0, 50 / 150])  # disjoint on both axes: 0, not (-)(-) > 0


def test_localisation_rule(run: A.Run) -> None:
    x, y = chw_images(run.data.x_val, run.device), run.data.y_val
    s = A.settings_for("test")
    whole = torch.tensor([[0, 0, 63, 63]]).expand(len(y), 4)
    loc, logits = A.localisation(run.model, x, y, whole, s, A.gallery_indices(y, 2))
    assert logits.shape == (len(y), len(run.data.wnids))
    assert 0 <= loc["top1_loc"] <= loc["gt_known_loc"] <= 100 and loc["whole_image_boxes"] == 100
    assert [g["index"] for g in loc["gallery"]] == A.gallery_indices(y, 2).tolist()
    assert np.array(loc["gallery"][0]["cam"]).shape == (8, 8)


# ----------------------------------------------------------------------------- FLOPs
def test_flops_of_a_training_step(run: A.Run) -> None:
    f = A.flops(run)
    assert f["what"].startswith("method.training_step + backward (vanilla)")
    assert f["forward_per_image"] == A.count_flops(lambda: run.model(torch.zeros(1, 3, 64, 64)))
    assert 2.5 < f["train_step_per_image"] / f["forward_per_image"] < 3.1  # docs/analysis.md §6: ~3x, no stem grad-input


# ----------------------------------------------------------------------------- analyze_run and its file
def test_analyze_run_writes_every_section(analysed: dict, run_dir: Path) -> None:
    assert json.loads((run_dir / runs.ANALYSIS).read_text()) == json.loads(json.dumps(analysed))
    for key in ("calibration", "adversarial", "occlusion", "corruptions", "localization", "flops", "cost"):
        assert analysed[key] is not None, key
    gen = analysed["corruptions"]["generated"]
    assert "not the official release" in gen["source"] and set(gen["skipped"]) >= {"motion_blur", "snow"}
    assert gen["severities"] == [1, 5] and all(len(v) == 2 for v in gen["top1"].values())
    run = A.load_run(run_dir, "cpu")
    sub = seeded_subset(len(run.data.y_val), A.settings_for("test").occlusion_images, 0, "occlusion-images")
    clean = A.predict(run.logits, chw_images(run.data.x_val[sub], run.device), batch_size=64).argmax(1)
    assert analysed["occlusion"]["top1"][0] == pytest.approx(100 * float((clean == run.data.y_val[sub]).double().mean()))
    assert analysed["clean"]["top1"] == pytest.approx(analysed["calibration"]["top1"])
    assert analysed["head"].startswith("model(x)") and analysed["checkpoint"]["sha256"]


def test_analyze_run_is_idempotent_and_rekeys_on_a_new_checkpoint(analysed: dict, run_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = run_dir / runs.ANALYSIS
    before, stamp = path.read_bytes(), path.stat().st_mtime_ns
    monkeypatch.setattr(A.analyze, "load_run", lambda *a, **k: pytest.fail("analysed again"))
    assert A.analyze_run(run_dir, device="cpu") == json.loads(before)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # "retrain": other weights, same run
    ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"] + 1.0
    torch.save(ckpt, run_dir / "checkpoint.pt")
    again = A.analyze_run(run_dir, device="cpu")
    assert again["key"] != analysed["key"] and again["checkpoint"]["sha256"] != analysed["checkpoint"]["sha256"]
    assert json.loads(path.read_bytes()) == json.loads(json.dumps(again))


def test_a_killed_write_leaves_no_partial_file(run_dir: Path, analysed: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import mixnb.io

    path = run_dir / runs.ANALYSIS
    before = path.read_bytes()

    def killed(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming it

    monkeypatch.setattr(mixnb.io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        A.analyze_run(run_dir, device="cpu", force=True)
    assert path.read_bytes() == before  # the old analysis, whole
    assert not list(run_dir.glob(f".{runs.ANALYSIS}.*.tmp"))
    path.unlink()
    with pytest.raises(KeyboardInterrupt):
        A.analyze_run(run_dir, device="cpu", force=True)
    assert not path.exists() and not list(run_dir.glob(f".{runs.ANALYSIS}.*.tmp"))
    monkeypatch.undo()
    A.analyze_run(run_dir, device="cpu")  # leave the module's run analysed for the tests below


def test_unfinished_and_missing_runs_fail_naming_the_file(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoint.pt")):
        A.analyze_run(tmp_path)
    half = tmp_path / "half"
    half.mkdir()
    (half / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match="is not finished"):
        A.analyze_run(half)


def test_report_helpers(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    A.analyze_run(run_dir, device="cpu")
    rec = runs.read_analysis(run_dir)
    other = {**rec, "method": "mixup", "seed": 1}
    table = beyond_table([rec, run_dir, other])
    assert list(table.index) == ["vanilla", "mixup"] and table.loc["vanilla", "n"] == 2
    assert {"ECE", "NLL", "FGSM", "PGD", "occlusion AUC", "corruption", "localization"} <= set(table.columns)
    assert table.loc["vanilla", "ECE"] == pytest.approx(rec["calibration"]["ece"])
    mce = mce_table([rec, other], source="generated")
    assert mce.loc["vanilla", "mCE"] == pytest.approx(100)
    n = rec["corruptions"]["generated"]["images"]
    assert mce.loc["mixup", "images"] == (max(n.values()) if isinstance(n, dict) else n) and mce.loc["mixup", "seeds"] == 1
    def moved(*args, **kwargs):
        raise AssertionError("the report read the dataset")

    monkeypatch.setattr(runs, "load_data", moved)  # the data moved, or lives on the GPU machine only
    assert [it["label_name"] for it in rec["localization"]["gallery"]][:1] and "image_png" in rec["localization"]["gallery"][0]
    for fig in (plot_reliability([rec, other]), plot_occlusion([rec]), cam_gallery(run_dir)):
        assert fig.axes
        plt.close(fig)
    grid = cam_gallery([run_dir, run_dir])  # one grid: the images, then a row per run
    images = len(rec["localization"]["gallery"])
    assert len(grid.axes) == 3 * images
    assert " ".join(grid.axes[0].get_title().split()) == " ".join(rec["localization"]["gallery"][0]["label_name"].split())
    assert [t.get_text().replace("\n", "") for t in grid.axes[images].texts] == [rec["run"]]  # each run's row named
    plt.close(grid)
    d = definitions()
    assert set(table.columns) - {"backbone", "n"} <= set(d) and all(isinstance(v, str) and v for v in d.values())
    assert "15 equal-width" in d["ECE"] and ">= 0.5" in d["localization"]


def test_command_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    A.add_analyze_options(parser)
    assert A.analyze_from_args(parser.parse_args([str(run_dir), "--device", "cpu"])) == 0
    assert "ECE" in capsys.readouterr().out
    assert A.analyze_from_args(parser.parse_args([str(tmp_path / "nope")])) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope/checkpoint.pt" in err


def test_settings_validate_and_cover_every_profile() -> None:
    from mixnb.config import PROFILES

    assert set(A.PROFILE_SETTINGS) == set(PROFILES)
    assert A.settings_for("tiny-imagenet").pgd_steps == 10 and A.settings_for("sample").pgd_steps == 10
    with pytest.raises(ValueError, match="unknown corruption"):
        A.AnalysisSettings(corruptions=("fog", "rain"))
    with pytest.raises(ValueError, match="no analysis settings"):
        A.settings_for("imagenet")
    assert A.AnalysisSettings(batch_size=7).key() == A.AnalysisSettings().key()  # the batch changes no number
    assert A.AnalysisSettings(seed=1).key() != A.AnalysisSettings().key()
