#!/usr/bin/env bash
# One short GPU slot: scripts/gpu_verify.py first (correctness, one line per check), then the speed parts.
# Default DEADLINE=360 s for the whole script, of which gpu_verify gets VERIFY_S=240 (its checks stop starting
# there) and the speed parts the rest. Why 360: a lent machine gives a session 15 minutes of device time, its
# start costs ~2-3 minutes, so start (~150 s) + one call (360 s) + a rerun on the still-warm machine (360 s)
# = ~870 s fits 900 s. A rerun after the machine went back pays a second start: then rerun only what failed
# (`python scripts/gpu_verify.py --only NAME,...`) or give the speed parts a call of their own (VERIFY=0).
# The speed parts, in this priority order, each under its own `timeout` (a part that hits it keeps its rows):
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
# started by two thirds of their part's timeout are skipped (--budget). With the 360 s default only the first
# parts run after gpu_verify; DEADLINE=540 VERIFY=0 in a call of its own gives them the old slot.
# Last of all: ONE summary of every result (python -m mixnb.bench --summarize).
# Runs from the source tree (PYTHONPATH=.) with the machine's own Python: no venv, no network.
# Carry .cache/gpu-wheels (`make gpu-wheels`: papermill, nbclient, ipykernel, submitit, gco-wrapper for cp312):
# gpu_verify.py installs them into /tmp/mixnb-gpu-site (pip --no-index --target), put first on the path here too.
# Results: $OUT (default ./bench-results/gpu-check): gpu_verify.txt (its lines), gpu_verify.log (its checks'
# output), gpu_check.log (everything), and the speed parts' folders (vanilla-<mode>/, step/, step-rx50/,
# methods/, concurrent/, kernels-<mode>/, sync/ with SYNC=1) packed into gpu_check_parts.tgz at the end (the
# device tool returns at most 8 files; KEEP_PARTS=1 leaves the folders unpacked under $OUT/parts too).
# Usage: bash scripts/gpu_check.sh   (on a device call: carry [".cache/gpu-wheels"], timeout_s 420;
#   DEADLINE=... VERIFY_S=... to resize; VERIFY=0 skips gpu_verify; MODES="off default" for part b's modes;
#   MODE=off|default|reduce-overhead for part d; METHODS=a,b for parts c and d)
# A CPU dry run of the plumbing (~5 minutes on 2 cores; the --compile there overrides every part's mode):
#   VERIFY_ARGS=--dry BENCH_EXTRA="--device cpu --width 8 --batch-size 20 --seconds 0.01 --windows 1 --warmup 1
#   --eval-images 40 --compile off" METHODS=vanilla,cutmix DEADLINE=420 bash scripts/gpu_check.sh
# Not `set -e`: one failing part must not lose the others.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-results/gpu-check}"
DEADLINE="${DEADLINE:-360}"  # seconds for the whole script
VERIFY_S="${VERIFY_S:-240}"  # gpu_verify.py's --budget-s (its last check may run a little past it)
RESERVE=20  # seconds kept for the summary
mkdir -p "$OUT"
PARTS="$OUT/parts"
rm -rf "$PARTS" "$OUT/gpu_check_parts.tgz" "$OUT/gpu_check.log"  # this script's own, from an earlier run
mkdir -p "$PARTS"
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

# 0. Correctness first: gpu_verify.py (it also installs the carried wheels into /tmp/mixnb-gpu-site).
if [ "${VERIFY:-1}" != 0 ]; then
    say "gpu_verify.py (budget ${VERIFY_S}s)"
    read -r -a VERIFY_EXTRA <<< "${VERIFY_ARGS:-}"
    OUT="$OUT" timeout -k 10 $(( VERIFY_S + 60 )) "$PY" scripts/gpu_verify.py --budget-s "$VERIFY_S" \
        ${VERIFY_EXTRA[@]+"${VERIFY_EXTRA[@]}"}
    VERIFY_RC=$?
    say "gpu_verify.py: done (rc $VERIFY_RC: $([ $VERIFY_RC = 0 ] && echo 'no FAIL' || echo 'see the FAIL lines'))"
else
    OUT="$OUT" "$PY" scripts/gpu_verify.py --only env >/dev/null  # installs the carried wheels, nothing else
fi
if [ -d /tmp/mixnb-gpu-site ]; then export PYTHONPATH="/tmp/mixnb-gpu-site:$PYTHONPATH"; fi

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
        "$PY" -m mixnb.bench --sync-check --backbones resnet18 --warmup 2 --out "$PARTS/sync" ${EXTRA[@]+"${EXTRA[@]}"}
fi

# b. Vanilla under each compile mode, R-18 then RX-50, one process per mode (the compile is in the warm-up;
#    inductor's on-disk cache makes the later modes' compiles shorter), then RX-50 under max-autotune.
for mode in "${VANILLA_MODES[@]}"; do
    bench "b. Vanilla, compile $mode" "$(mode_weight "$mode" 7 13)" --methods vanilla --backbones resnet18,resnext50 --compile "$mode" \
        --no-peers --seconds 1.0 --windows 3 --warmup 3 --out "$PARTS/vanilla-$mode"
done
bench "b. RX-50 Vanilla, compile max-autotune (warm-up s = its compile)" 11 --methods vanilla --backbones resnext50 \
    --compile max-autotune --no-peers --seconds 1.0 --windows 3 --warmup 3 --out "$PARTS/vanilla-max-autotune"

# c. The whole step captured, costliest methods first (Vanilla first: the x Vanilla column), R-18 then RX-50 in
#    two parts so that RX-50's AutoMix/SAMix rows, the largest cost of the table, are measured in any case.
STEP_FIRST="vanilla,automix,samix,puzzlemix,manifoldmix,attentivemix,saliencymix"
STEP_METHODS=$(printf '%s\n' "${STEP_FIRST//,/$'\n'}" "${METHODS//,/$'\n'}" | grep -Fx -f <(printf '%s\n' "${METHODS//,/$'\n'}") \
    | awk '!seen[$0]++' | paste -sd,)
bench "c. every method, compile reduce-overhead, capture step, R-18" 9 --methods "$STEP_METHODS" \
    --backbones resnet18 --compile reduce-overhead --capture step --no-peers --seconds 1.0 --windows 3 \
    --warmup 3 --out "$PARTS/step"
bench "c. the costliest methods, compile reduce-overhead, capture step, RX-50" 9 --methods "$STEP_METHODS" \
    --backbones resnext50 --compile reduce-overhead --capture step --no-peers --seconds 1.0 --windows 3 \
    --warmup 3 --out "$PARTS/step-rx50"
bench "d. every method, compile ${MODE:-auto}, peers" 13 --methods "$METHODS" --backbones resnet18,resnext50 \
    --compile "${MODE:-auto}" --seconds 1.0 --windows 3 --warmup 3 --out "$PARTS/methods"

# e. K runs sharing the GPU (make sweep RUNS_PER_GPU=K): each process's img/s and their sum.
bench "e. concurrent processes, K = 1, 2, 3" 13 --concurrent 1,2,3 --methods vanilla,puzzlemix --backbones resnet18 \
    --seconds 1.0 --windows 3 --warmup 3 --out "$PARTS/concurrent"

# f. Where RX-50 Vanilla's device time goes, with CUDA graphs and eager.
for mode in reduce-overhead off; do
    bench "f. RX-50 Vanilla kernel profile, compile $mode" "$(mode_weight "$mode" 3 5)" --profile-kernels --methods vanilla \
        --backbones resnext50 --compile "$mode" --warmup 3 --out "$PARTS/kernels-$mode"
done

say "finished in ${SECONDS}s"
for name in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "skipped: $name"; done
for name in ${TIMED_OUT[@]+"${TIMED_OUT[@]}"}; do echo "hit its timeout: $name"; done
"$PY" -m mixnb.bench --summarize "$PARTS"
tar -czf "$OUT/gpu_check_parts.tgz" -C "$PARTS" . && echo "packed the parts into $OUT/gpu_check_parts.tgz"
if [ -z "${KEEP_PARTS:-}" ]; then rm -rf "$PARTS"; fi
