#!/usr/bin/env bash
# One short GPU slot (one call under 10 minutes, DEADLINE=540 s by default), in this priority order, each part
# under its own `timeout` (a part that hits it keeps the rows written so far):
#   a. environment, and the CUDA-graph tests (pytest tests/test_compile.py -k cuda);
#   b. Vanilla on R-18 and RX-50 under each of MODES (default "off reduce-overhead"; "default" measured
#      slower), then RX-50 Vanilla under max-autotune (its warm-up s is the compile; inductor's on-disk cache
#      stays where it is by default);
#   c. every method with --compile reduce-overhead --capture step, costliest first, R-18 then RX-50;
#   d. every method with --compile ${MODE:-auto} (the Trainer's default) and the peers, R-18 then RX-50;
#   e. --concurrent 1,2,3: R-18 Vanilla and PuzzleMix, K processes at once on the GPU (aggregate img/s);
#   f. --profile-kernels: RX-50 Vanilla's device time by kernel category, reduce-overhead then eager.
# Each part's timeout is its weight's share of the time left (so time a part leaves unused goes to the later
# ones), at least 20 s; a part with less than that left is skipped and listed as skipped. Bench rows not
# started by two thirds of their part's timeout are skipped (--budget). Last of all: ONE summary of every
# result (python -m mixnb.bench --summarize "$OUT").
# Runs from the source tree (PYTHONPATH=.) with the machine's own Python: no venv, no network.
# Carry .cache/gpu-wheels (cp312 gco-wrapper + opencv-contrib wheels, see below) for PuzzleMix and SaliencyMix.
# Results go to $OUT (default ./bench-results/gpu-check; a run first removes the previous run's part folders
# there): gpu_check.log, vanilla-<mode>/, step/, step-rx50/, methods/ (bench.{json,md}), concurrent/ (concurrent.{json,md},
# k<K>/p<i>/ per process), kernels-<mode>/ (kernels.{json,md}), sync/ with SYNC=1.
# Usage: bash scripts/gpu_check.sh   (DEADLINE=300 for a shorter slot; MODES="off default" for part b's
#   modes; MODE=off|default|reduce-overhead for part d; METHODS=a,b for parts c and d)
# A CPU dry run of the plumbing (~2 minutes on 2 cores; the --compile there overrides every part's mode):
#   BENCH_EXTRA="--device cpu --width 8 --batch-size 20 --seconds 0.01 --windows 1 --warmup 1 --eval-images 40
#   --compile off" METHODS=vanilla,cutmix DEADLINE=240 bash scripts/gpu_check.sh
# Not `set -e`: one failing part must not lose the others.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-results/gpu-check}"
DEADLINE="${DEADLINE:-540}"  # seconds for the whole script
RESERVE=20  # seconds kept for the summary
mkdir -p "$OUT"
rm -rf "$OUT"/vanilla-* "$OUT"/step "$OUT"/step-rx50 "$OUT"/methods "$OUT"/concurrent "$OUT"/kernels-* "$OUT"/sync  # this script's own
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PY:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MIXNB_CACHE="${MIXNB_CACHE:-/tmp/mixnb-cache}"  # the generated sample set, made once
export PYTHONUNBUFFERED=1
read -r -a EXTRA <<< "${BENCH_EXTRA:-}"  # appended to every bench call (later options win)
SKIPPED=() TIMED_OUT=()

say() { printf '\n[%4ds] == %s\n' "$SECONDS" "$*"; }
left() { echo $((DEADLINE - SECONDS)); }
# Part weights (the shares of the time): a 22; b 7 for "off", 13 for another mode, 11 for max-autotune; c 9 per
# backbone; d, e 13 each; f 5 with CUDA graphs, 3 eager. W_LEFT: the weights of the parts still to run.
read -r -a VANILLA_MODES <<< "${MODES:-off reduce-overhead}"
mode_weight() { if [ "$1" = off ]; then echo "$2"; else echo "$3"; fi; }  # mode_weight MODE OFF_WEIGHT WEIGHT
W_LEFT=$(( 22 + 11 + 2 * 9 + 2 * 13 + 5 + 3 ))
for mode in "${VANILLA_MODES[@]}"; do W_LEFT=$(( W_LEFT + $(mode_weight "$mode" 7 13) )); done
# share WEIGHT: T = this part's timeout, WEIGHT / W_LEFT of the time left before the summary, at least 20 s
share() {
    local avail=$(( $(left) - RESERVE ))
    T=$(( avail * $1 / W_LEFT )); W_LEFT=$(( W_LEFT - $1 ))
    if [ "$T" -lt 20 ]; then T=$(( avail < 20 ? avail : 20 )); fi
}
# part NAME TIMEOUT CMD...: run CMD under a timeout, report its status, never stop the script
part() {
    local name=$1 limit=$2; shift 2
    if [ "$limit" -lt 20 ]; then say "$name: skipped, ${limit}s left"; SKIPPED+=("$name"); return; fi
    say "$name (timeout ${limit}s)"
    timeout -k 10 "$limit" "$@"
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "!! $name hit its ${limit}s timeout (rows written so far are kept)"; TIMED_OUT+=("$name")
    elif [ $rc -ne 0 ]; then
        echo "!! $name exited with $rc"
    fi
    say "$name: done (rc $rc)"
}
# bench NAME WEIGHT ARGS...: part NAME running python -m mixnb.bench ARGS (and BENCH_EXTRA) with its share
bench() {
    local name=$1; share "$2"; shift 2
    part "$name" "$T" "$PY" -m mixnb.bench "$@" --budget $(( T * 2 / 3 )) ${EXTRA[@]+"${EXTRA[@]}"}
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

say "a. environment"
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
registry() { "$PY" -c 'from mixnb.mixups import REGISTRY; print(",".join(REGISTRY))'; }  # every method's name
if ! ALL_METHODS=$(registry 2>/dev/null); then
    if registry 2>&1 | grep -q "No module named 'gco'"; then
        STUBS=$(mktemp -d)
        printf '%s\n' "def cut_grid_graph(*args, **kwargs):" \
            "    raise ImportError('gco-wrapper is not installed on this machine (stub from scripts/gpu_check.sh)')" \
            > "$STUBS/gco.py"
        export PYTHONPATH="$STUBS:$PYTHONPATH"
        echo "NOTE: mixnb.mixups imports gco at module level; using a stub gco so the other methods run"
    fi
    ALL_METHODS=$(registry) || echo "!! mixnb.mixups does not import; the bench parts below will fail"
fi
METHODS="${METHODS:-$ALL_METHODS}"

share 22
if "$PY" -c "import pytest" 2>/dev/null; then
    part "a. pytest: CUDA-graph steps against eager on CUDA" "$T" \
        "$PY" -m pytest -q -x -p no:cacheprovider tests/test_compile.py -k cuda
else
    say "a. pytest: not installed here, skipped"
fi

if [ "${SYNC:-0}" = 1 ]; then  # outside the shares: SYNC=1 is asked for on purpose
    part "sync check: each method's step under torch.cuda.set_sync_debug_mode('error')" 90 \
        "$PY" -m mixnb.bench --sync-check --backbones resnet18 --warmup 2 --out "$OUT/sync" ${EXTRA[@]+"${EXTRA[@]}"}
fi

# b. Vanilla under each compile mode, R-18 then RX-50, one process per mode (the compile is in the warm-up;
#    inductor's on-disk cache makes the later modes' compiles shorter), then RX-50 under max-autotune.
for mode in "${VANILLA_MODES[@]}"; do
    bench "b. Vanilla, compile $mode" "$(mode_weight "$mode" 7 13)" --methods vanilla --backbones resnet18,resnext50 --compile "$mode" \
        --no-peers --seconds 1.0 --windows 3 --warmup 3 --out "$OUT/vanilla-$mode"
done
bench "b. RX-50 Vanilla, compile max-autotune (warm-up s = its compile)" 11 --methods vanilla --backbones resnext50 \
    --compile max-autotune --no-peers --seconds 1.0 --windows 3 --warmup 3 --out "$OUT/vanilla-max-autotune"

# c. The whole step captured, costliest methods first (Vanilla first: the x Vanilla column), R-18 then RX-50 in
#    two parts so that RX-50's AutoMix/SAMix rows, the largest cost of the table, are measured in any case.
STEP_FIRST="vanilla,automix,samix,puzzlemix,manifoldmix,attentivemix,saliencymix"
STEP_METHODS=$(printf '%s\n' "${STEP_FIRST//,/$'\n'}" "${METHODS//,/$'\n'}" | grep -Fx -f <(printf '%s\n' "${METHODS//,/$'\n'}") \
    | awk '!seen[$0]++' | paste -sd,)
bench "c. every method, compile reduce-overhead, capture step, R-18" 9 --methods "$STEP_METHODS" \
    --backbones resnet18 --compile reduce-overhead --capture step --no-peers --seconds 1.0 --windows 3 \
    --warmup 3 --out "$OUT/step"
bench "c. the costliest methods, compile reduce-overhead, capture step, RX-50" 9 --methods "$STEP_METHODS" \
    --backbones resnext50 --compile reduce-overhead --capture step --no-peers --seconds 1.0 --windows 3 \
    --warmup 3 --out "$OUT/step-rx50"
bench "d. every method, compile ${MODE:-auto}, peers" 13 --methods "$METHODS" --backbones resnet18,resnext50 \
    --compile "${MODE:-auto}" --seconds 1.0 --windows 3 --warmup 3 --out "$OUT/methods"

# e. K runs sharing the GPU (make sweep RUNS_PER_GPU=K): each process's img/s and their sum.
bench "e. concurrent processes, K = 1, 2, 3" 13 --concurrent 1,2,3 --methods vanilla,puzzlemix --backbones resnet18 \
    --seconds 1.0 --windows 3 --warmup 3 --out "$OUT/concurrent"

# f. Where RX-50 Vanilla's device time goes, with CUDA graphs and eager.
for mode in reduce-overhead off; do
    bench "f. RX-50 Vanilla kernel profile, compile $mode" "$(mode_weight "$mode" 3 5)" --profile-kernels --methods vanilla \
        --backbones resnext50 --compile "$mode" --warmup 3 --out "$OUT/kernels-$mode"
done

say "finished in ${SECONDS}s"
for name in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "skipped: $name"; done
for name in ${TIMED_OUT[@]+"${TIMED_OUT[@]}"}; do echo "hit its timeout: $name"; done
"$PY" -m mixnb.bench --summarize "$OUT"
