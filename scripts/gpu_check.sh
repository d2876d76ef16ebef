#!/usr/bin/env bash
# One short GPU slot (<= 9 minutes): environment, the CUDA-graph tests, Vanilla eager and with CUDA
# graphs (MODES="off reduce-overhead"; "default" measured slower) on both backbones, then every method with the
# Trainer's compile mode and the peers, R-18 first, until the deadline.
# Runs from the source tree (PYTHONPATH=.) with the machine's own Python: no venv, no network.
# Carry .cache/gpu-wheels (cp312 gco-wrapper + opencv-contrib wheels, see below) for PuzzleMix and SaliencyMix.
# Results go to $OUT (default ./bench-results): gpu_check.log, vanilla-<mode>/bench.{json,md},
#   methods/bench.{json,md} (and sync/sync.{json,md} with SYNC=1).
# Usage: bash scripts/gpu_check.sh   (DEADLINE=300 for a shorter slot; MODES="off default" for the
#   Vanilla part's modes; MODE=off|default|reduce-overhead and METHODS=a,b for the method part)
# A CPU dry run of the plumbing: BENCH_EXTRA="--device cpu --width 8 --batch-size 20 --seconds 0.01
#   --windows 1 --warmup 1 --eval-images 40 --compile off" METHODS=vanilla,cutmix bash scripts/gpu_check.sh
# Not `set -e`: one failing part must not lose the others; each part has its own `timeout`.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-results}"
DEADLINE="${DEADLINE:-480}"  # seconds for the whole script
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PY:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MIXNB_CACHE="${MIXNB_CACHE:-/tmp/mixnb-cache}"  # the generated sample set, made once
export PYTHONUNBUFFERED=1
read -r -a EXTRA <<< "${BENCH_EXTRA:-}"  # appended to every bench call (later options win)

say() { printf '\n[%4ds] == %s\n' "$SECONDS" "$*"; }
left() { echo $((DEADLINE - SECONDS)); }
# part NAME TIMEOUT CMD...: run CMD under a timeout, report its status, never stop the script
part() {
    local name=$1 limit=$2; shift 2
    if [ "$limit" -lt 20 ]; then say "$name: skipped, ${limit}s left"; return; fi
    say "$name (timeout ${limit}s)"
    timeout -k 10 "$limit" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "!! $name hit its ${limit}s timeout (rows written so far are kept)"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "!! $name exited with $rc"
    say "$name: done (rc $rc)"
}

# Optional packages the machine lacks (gco-wrapper for PuzzleMix, opencv-contrib's cv2.saliency for
# SaliencyMix, pytest for the CUDA tests), as wheels carried in .cache/gpu-wheels (git-ignored: pass
# carry=[".cache/gpu-wheels"]): unzipped into a folder put first on the path (no pip, no network, no
# change to the machine's Python). Made with: python3.12 -m pip wheel gco-wrapper --no-deps, and
# pip download --no-deps -d .cache/gpu-wheels opencv-contrib-python-headless==4.10.0.84 pytest pluggy iniconfig
WHEELS=(.cache/gpu-wheels/*.whl)
if [ -e "${WHEELS[0]}" ] && "$PY" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))" \
        && ! "$PY" -c "import gco, cv2; cv2.saliency" 2>/dev/null; then  # the gco wheel is cp312
    EXTRA_PKGS=$(mktemp -d)
    for whl in "${WHEELS[@]}"; do "$PY" -m zipfile -e "$whl" "$EXTRA_PKGS" && echo "unpacked $(basename "$whl")"; done
    export PYTHONPATH="$EXTRA_PKGS:$PYTHONPATH"
fi

say "environment"
echo "commit: $(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here: note the commit the tree came from)')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
"$PY" - <<'EOF'
import importlib, importlib.util, os, sys
import torch, torchvision
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision "
      f"{torchvision.__version__}, GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}, "
      f"{os.cpu_count()} CPUs")
for name in ("timm", "gco", "cv2", "pytest"):
    print(f"  {name}: {'yes' if importlib.util.find_spec(name) else 'MISSING'}")
try:
    import cv2
    print(f"  cv2.saliency: {'yes' if hasattr(cv2, 'saliency') else 'MISSING -> SaliencyMix is skipped'}")
except ImportError:
    pass
EOF

# PuzzleMix needs gco-wrapper (not on this machine). If the registry cannot even be imported
# without it, put a stub `gco` first on the path: PuzzleMix then fails at its first graph cut
# and the bench marks it "skipped: ImportError", while every other method runs.
if ! "$PY" -c "import mixnb.mixups" 2>/dev/null; then
    if "$PY" -c "import mixnb.mixups" 2>&1 | grep -q "No module named 'gco'"; then
        STUBS=$(mktemp -d)
        printf '%s\n' "def cut_grid_graph(*args, **kwargs):" \
            "    raise ImportError('gco-wrapper is not installed on this machine (stub from scripts/gpu_check.sh)')" \
            > "$STUBS/gco.py"
        export PYTHONPATH="$STUBS:$PYTHONPATH"
        echo "NOTE: mixnb.mixups imports gco at module level; using a stub gco so the other methods run"
    fi
    "$PY" -c "import mixnb.mixups" || echo "!! mixnb.mixups does not import; the bench parts below will fail"
fi

if "$PY" -c "import pytest" 2>/dev/null; then
    part "pytest: CUDA-graph steps against eager on CUDA" 150 \
        "$PY" -m pytest -q -x -p no:cacheprovider tests/test_compile.py -k cuda
else
    say "pytest: not installed here, skipped"
fi

if [ "${SYNC:-0}" = 1 ]; then
    part "sync check: each method's step under torch.cuda.set_sync_debug_mode('error')" 90 \
        "$PY" -m mixnb.bench --sync-check --backbones resnet18 --warmup 2 --out "$OUT/sync" ${EXTRA[@]+"${EXTRA[@]}"}
fi

# 1. Vanilla under each compile mode, R-18 then RX-50, in one process per mode (compile time is in
#    the warm-up; inductor's on-disk cache makes the later modes' compiles shorter).
for mode in ${MODES:-off reduce-overhead}; do
    T=$(( $(left) * 2 / 5 )); [ "$T" -gt 200 ] && T=200
    part "bench Vanilla, compile $mode" "$T" \
        "$PY" -m mixnb.bench --methods vanilla --backbones resnet18,resnext50 --compile "$mode" --no-peers \
        --seconds 1.0 --windows 3 --warmup 3 --budget $((T - 60)) --out "$OUT/vanilla-$mode" ${EXTRA[@]+"${EXTRA[@]}"}
done

# 2. Every method (and the peers) with the Trainer's default compile mode, R-18 first; rows not
#    started when the budget runs out are listed as skipped.
T=$(( $(left) - 15 ))
part "bench, every method, compile ${MODE:-auto}, peers" "$T" \
    "$PY" -m mixnb.bench --methods "${METHODS:-$("$PY" -c 'from mixnb.mixups import REGISTRY; print(",".join(REGISTRY))')}" \
    --backbones resnet18,resnext50 --compile "${MODE:-auto}" --seconds 1.0 --windows 3 --warmup 3 \
    --budget $((T - 40)) --out "$OUT/methods" ${EXTRA[@]+"${EXTRA[@]}"}

say "results (also in $OUT)"
for f in "$OUT"/sync/sync.md "$OUT"/vanilla-*/bench.md "$OUT"/methods/bench.md; do
    if [ -f "$f" ]; then echo; echo "### $f"; cat "$f"; else echo "(no $f)"; fi
done
say "finished in ${SECONDS}s"
