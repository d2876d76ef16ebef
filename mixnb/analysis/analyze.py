"""analyze_run: every section on a finished run, written to ``run_dir/analysis.json`` keyed on its checkpoint.

Cost (2-core CPU VM, sample profile: 10 classes, 300 val images, a width-8 ResNet-18; cost.seconds of each
run): 2.6-3.3 s per run with 2 threads on a quiet machine, 4.6-7.0 s with 1 thread; with another job busy
on the VM, 1 thread stays at ~5-9 s while 2 threads took 33 s (OpenMP threads waiting on each other), hence
``--threads``. The first run in a process adds ~1.2 s of imports; the corrupted set is generated once per
dataset (1.0 s for the sample profile's 30 images x 16 corruptions x 3 severities; ~11 ms per image and
severity for all 16 on one core, so ~2 min for tiny-imagenet's 2,000 x 5). Every pass runs in batches on
the run's device with the data already there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixnb.analysis.attacks import adversarial
from mixnb.analysis.calibrate import calibration
from mixnb.analysis.cam import gallery_indices, localisation
from mixnb.analysis.corruptions import check_tinc, corruption_accuracy, official_corruptions
from mixnb.analysis.flop_count import flops
from mixnb.analysis.occlude import occlusion
from mixnb.analysis.run import chw_images, load_run, predict, seeded_subset
from mixnb.analysis.settings import PROFILE_SETTINGS, AnalysisSettings, settings_for
from mixnb.config import RunConfig
from mixnb.device import autocast_dtype
from mixnb.io import remove_stale_temps, write_json
from mixnb.memory import ANALYSIS_BUDGET_GIB, analysis_batch, predict_analysis_gib
from mixnb.runs import (ANALYSIS, ANALYSIS_FAILED, ANALYSIS_VERSION, CHECKPOINT, PARAMS, complete_identity, failure,
                        identity_differences, is_finished, load_checkpoint, read_analysis, read_summary,
                        recorded_identity)



def checkpoint_record(path: Path) -> dict[str, Any]:
    """sha256, size and mtime of a checkpoint: what an analysis is keyed on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    st = path.stat()
    return {"file": path.name, "sha256": h.hexdigest(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_checkpoint(run_dir: Path) -> None:
    """Refuse a checkpoint.pt of another run than its folder records (params.json): one copied in from another run
    would have its numbers filed under this one. A corrupt one is left to ``load_run``, which names it."""
    ckpt, recorded = load_checkpoint(run_dir / CHECKPOINT), recorded_identity(run_dir)
    if ckpt is None or recorded is None:
        return
    if diff := identity_differences(recorded, complete_identity(ckpt["identity"])):
        shown = "; ".join(f"{k}: {a!r} in {PARAMS}, {b!r} in it" for k, (a, b) in diff.items())
        raise ValueError(f"{run_dir / CHECKPOINT} is another run's checkpoint ({shown}); put this run's own back, or "
                         f"analyse that one in its own folder")


def analysis_key(ckpt: dict[str, Any], settings: AnalysisSettings, tinc: str | None) -> dict[str, Any]:
    return {"checkpoint_sha256": ckpt["sha256"], "settings": settings.key(), "tinc": tinc, "version": ANALYSIS_VERSION}


def analyze_or_record(run_dir: str | Path, *, device: str = "auto", force: bool = False,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """``analyze_run``, with a failure recorded instead of raised: analysis_failed.json says why (one line) and
    None is returned. The training result stays finished; the next ``make sweep`` or ``make analyze`` retries.
    A folder that is not a finished run raises as ``analyze_run`` does, and nothing is recorded."""
    if not is_finished(Path(run_dir)) or failure(Path(run_dir)) is not None:
        return analyze_run(run_dir, device=device, force=force, progress=progress)  # raises why
    try:
        return analyze_run(run_dir, device=device, force=force, progress=progress)
    except Exception as err:  # an out-of-memory, a dataset that moved, a bug: the run's training result stands
        reason = (f"{type(err).__name__}: {err}".splitlines() or [type(err).__name__])[0]
        write_json(Path(run_dir) / ANALYSIS_FAILED, {"reason": reason, "device": device,
                                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return None


def pass_batch(cfg: RunConfig, settings: AnalysisSettings, batch_size: int | None) -> dict[str, Any]:
    """The analysis' batch and why: ``batch_size`` when given, else the memory model's ``analysis_batch`` capped
    by the settings' batch; with the attack pass's predicted CUDA peak at that batch."""
    batch = batch_size or min(settings.batch_size, analysis_batch(cfg))
    return {"batch_size": batch, "chosen_by": "the caller" if batch_size else "mixnb.memory.analysis_batch",
            "predicted_attack_peak_gib": round(predict_analysis_gib(cfg, batch), 2), "budget_gib": ANALYSIS_BUDGET_GIB}


def with_gallery_images(localization: dict[str, Any], data: Any) -> dict[str, Any]:
    """The CAM gallery's items with what drawing them needs beside the CAM: the val image (a base64 PNG, ~4 KB)
    and the class names, so the report draws the gallery without the dataset (it may have moved, or live on
    the GPU machine only)."""
    import base64
    import io

    from PIL import Image

    def png(index: int) -> str:
        buf = io.BytesIO()
        Image.fromarray(data.x_val[index].numpy()).save(buf, format="PNG")  # (H, W, 3) uint8
        return base64.b64encode(buf.getvalue()).decode()

    def name(label: int) -> str:
        return data.words.get(data.wnids[label], data.wnids[label]).split(",")[0]

    items = [{**it, "image_png": png(it["index"]), "label_name": name(it["label"]), "pred_name": name(it["pred"])}
             for it in localization["gallery"]]
    return {**localization, "gallery": items}


def analyze_run(run_dir: str | Path, *, settings: AnalysisSettings | None = None, device: str = "auto",
                force: bool = False, progress: Callable[[str], None] | None = None,
                batch_size: int | None = None) -> dict[str, Any]:
    """Analyse a finished run; writes ``run_dir/analysis.json`` (atomically) and returns it.

    Skipped (the file returned as it is) when it was made from the same checkpoint (sha256) with the same
    settings, official-set folder and ``ANALYSIS_VERSION``, unless ``force``; a run whose checkpoint was deleted keeps
    its analysis. ``settings``: None = ``settings_for(the run's profile)``. ``device``: "auto" | "cpu" |
    "cuda[:N]". ``progress``: called with a line per section (None: quiet). ``batch_size``: images per pass;
    None = the largest predicted to keep an attack pass under ``ANALYSIS_BUDGET_GIB``, at most the settings'
    (``pass_batch``). Recorded under "memory"; not in the key, as batching changes no number.

    Raises:
        FileNotFoundError: no checkpoint.pt (and no analysis).
        ValueError: the run is not finished or diverged; its checkpoint or dataset cannot be used.
    """
    run_dir = Path(run_dir)
    out = run_dir / ANALYSIS
    remove_stale_temps(out)  # left by a killed write
    ckpt_path = run_dir / CHECKPOINT
    old = read_analysis(run_dir)
    if not ckpt_path.is_file():
        if old is not None and not force:
            return old
        raise FileNotFoundError(f"{ckpt_path} not found: nothing to analyse")
    if (failed := failure(run_dir)) is not None:
        raise ValueError(f"{run_dir} diverged ({failed.get('reason')}); it has nothing to analyse")
    if not is_finished(run_dir):
        raise ValueError(f"{run_dir} is not finished (no complete summary.json and metrics.csv); analyse it once "
                         f"it has finished")
    record = checkpoint_record(ckpt_path)
    tinc = check_tinc()
    if settings is None:
        profile = (read_summary(run_dir) or {}).get("profile")
        settings = settings_for(profile) if profile in PROFILE_SETTINGS else None
    if old is not None and not force and settings is not None and old.get("key") == analysis_key(record, settings, tinc):
        return old

    say = progress or (lambda line: None)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds[name] = time.perf_counter() - t0
        say(f"{run_dir.name}: {name} {seconds[name]:.1f}s")
        return result

    t0 = time.perf_counter()
    check_checkpoint(run_dir)
    run = load_run(run_dir, device)
    if settings is None:
        settings = settings_for(run.cfg.profile)
    seconds["load"] = time.perf_counter() - t0
    memory = pass_batch(run.cfg, settings, batch_size)
    s, data, dev = dataclasses.replace(settings, batch_size=memory["batch_size"]), run.data, run.device
    x = chw_images(data.x_val, dev)  # (N, 3, 64, 64) uint8, on the device once
    y = data.y_val.to(dev)
    boxes = data.val_boxes.to(dev)
    gallery = gallery_indices(data.y_val, s.gallery_images).to(dev)
    # one forward for the CAMs and the clean logits (the reported head is model(x): _reported_head checked)
    norm = run.normalise  # the run's own mean/std (its profile's), in every pass
    localization, logits = timed("clean + CAM", lambda: localisation(run.model, x, y, boxes, s, gallery, normalise=norm))
    if run.logits is not run.model:
        logits = timed("clean", lambda: predict(run.logits, x, batch_size=s.batch_size, normalise=norm))
    autocast = autocast_dtype(run.cfg.precision, dev) == torch.bfloat16
    result: dict[str, Any] = {
        "version": ANALYSIS_VERSION, "key": analysis_key(record, s, tinc), "checkpoint": {**record, "epoch": run.ckpt["epoch"]},
        "run": run.cfg.run_name(), "run_dir": str(run_dir), "method": run.cfg.method, "backbone": run.cfg.backbone,
        "seed": run.cfg.seed, "profile": run.cfg.profile, "settings": s.to_dict(), "device": str(dev),
        "precision": "fp32 (the run evaluated in bf16 autocast)" if autocast else "fp32",
        "head": run.head, "setup_error": run.setup_error, "normalisation": dict(zip(("mean", "std"), run.cfg.normalisation)),
        "clean": {"top1": 100 * float((logits.argmax(1) == y).double().mean()), "images": len(y)}, "memory": memory,
    }
    result["calibration"] = timed("calibration", lambda: calibration(logits, y, n_bins=s.n_bins))
    sub = seeded_subset(len(y), s.attack_images, s.seed, "attack-images").to(dev)
    result["adversarial"] = timed("adversarial", lambda: adversarial(run.logits, x[sub], y[sub], s, normalise=norm))
    occ = seeded_subset(len(y), s.occlusion_images, s.seed, "occlusion-images").to(dev)
    result["occlusion"] = timed("occlusion", lambda: occlusion(run.logits, x[occ], y[occ], s, normalise=norm))
    result["corruptions"] = {"generated": timed("corruptions", lambda: corruption_accuracy(run.logits, data, s, dev,
                                                                                          normalise=norm)),
                             "official": None}
    if tinc:
        result["corruptions"]["official"] = timed("official", lambda: official_corruptions(run.logits, tinc, data, s, dev,
                                                                                          normalise=norm))
    result["localization"] = with_gallery_images(localization, data)
    result["flops"] = timed("flops", lambda: flops(run)) if s.flops else None
    seconds["total"] = time.perf_counter() - t_all
    n_att = len(sub)
    result["cost"] = {
        "seconds": seconds, "device": str(dev),
        "forward_images": len(y) * (1 + (run.logits is not run.model)) + len(occ) * len(s.occlusion_fractions) + n_att * (2 + s.pgd_restarts)
        + result["corruptions"]["generated"]["images"] * len(result["corruptions"]["generated"]["top1"]) * len(
            s.corruption_severities),
        "forward_backward_images": n_att * (1 + s.pgd_restarts * s.pgd_steps),
        "note": "image passes of the model: forward (clean, CAM (its backward stops at layer4), occlusion, attack "
                "read-outs, generated corruptions) and forward + backward to the input (FGSM, PGD); the FLOPs "
                "step and the generation of the corrupted set (once per dataset) are not counted",
    }
    write_json(out, result)
    (run_dir / ANALYSIS_FAILED).unlink(missing_ok=True)
    return result
