#!/usr/bin/env bash
# make gpu-wheels: the wheels the lent GPU machines lack, into .cache/gpu-wheels (git-ignored), for Python $PYVER
# (3.12: the lent GPU image's python3 is 3.12.3). What goes in:
#   - the notebook stack (papermill, nbclient, nbformat, ipykernel) and submitit with their dependencies,
#     resolved by `pip download --only-binary=:all: --python-version $PYVER --platform manylinux...` from the
#     configured package index, minus the packages the image already has (IMAGE_HAS, from KINDS.md's list of
#     2026-11-17: a second copy would shadow the image's own);
#   - gco-wrapper (PuzzleMix's graph cuts): PyPI has no cp312 wheel, only the sdist, so it is built here with a
#     local python$PYVER (`pip wheel`), when there is one;
#   - opencv-contrib-python-headless (cv2.saliency, SaliencyMix) is LEFT OUT: its wheel is 73 MB (5.1.0.95),
#     over the 64 MiB a device call carries by itself. SaliencyMix is skipped there; gpu_verify checks none of it.
# The wheels plus the tracked tree must stay under the 64 MiB carry limit: the script fails with the numbers if not.
# Offline-safe: pip runs against the configured index only; when it cannot be reached, the wheels already in
# .cache/gpu-wheels are kept and reported (the script fails only when there are none).
# Use on a device call: carry [".cache/gpu-wheels"]; scripts/gpu_verify.py installs them itself
# (pip install --no-index --no-deps --target /tmp/mixnb-gpu-site) and puts that folder first on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
DEST=.cache/gpu-wheels
LIMIT_MIB=64
PIP=(python3 -m pip)
[ -x .venv/bin/python ] && PIP=(.venv/bin/python -m pip)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
PACKAGES=(papermill nbclient nbformat ipykernel submitit)
# the image's packages (normalised names) that the resolution also pulls in: not carried
IMAGE_HAS="attrs certifi charset-normalizer click cloudpickle idna jinja2 markupsafe numpy packaging psutil pygments
python-dateutil pyyaml requests six tqdm typing-extensions urllib3 pluggy iniconfig pytest filelock fsspec"

norm() { tr 'A-Z_.' 'a-z--' <<< "$1"; }  # PEP 503 name normalisation
mkdir -p "$DEST"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

echo "== resolving ${PACKAGES[*]} for cp${PYVER/./} manylinux x86_64"
if "${PIP[@]}" download -q --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --abi "cp${PYVER/./}" --abi abi3 --abi none "${PLATFORMS[@]}" --find-links "$DEST" \
        --retries 1 --timeout 30 -d "$STAGE/all" "${PACKAGES[@]}" 2> >(grep -v "is ignored: it is neither" >&2); then
    rm -f "$DEST"/*.whl.tmp
    for whl in "$STAGE"/all/*.whl; do
        name=$(norm "$(basename "$whl" | cut -d- -f1)")
        if [[ " $(echo $IMAGE_HAS) " == *" $name "* ]]; then continue; fi
        cp -f "$whl" "$DEST/"
    done
else
    echo "!! the package index cannot be reached: keeping the $(ls "$DEST"/*.whl 2>/dev/null | wc -l) wheels already in $DEST"
fi

echo "== gco-wrapper (sdist only on PyPI: built with python$PYVER)"
if ls "$DEST"/gco_wrapper-*-cp${PYVER/./}-*.whl >/dev/null 2>&1; then
    echo "already there: $(basename "$DEST"/gco_wrapper-*.whl)"
else
    PY312=""
    for cand in "python$PYVER" "$HOME/.pyenv/versions/$PYVER"*/bin/python; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYVER'.split('.'))))" 2>/dev/null; then
            PY312=$cand; break
        fi
    done
    if [ -z "$PY312" ]; then
        echo "!! no python$PYVER here: gco-wrapper left out (PuzzleMix is skipped on the device)"
    elif "$PY312" -m pip wheel -q --no-deps --retries 1 --timeout 30 -w "$STAGE/gco" gco-wrapper \
            2> >(grep -v "is ignored: it is neither" >&2); then
        cp -f "$STAGE"/gco/gco_wrapper-*.whl "$DEST/"
    else
        echo "!! building gco-wrapper failed (offline?): left out, PuzzleMix is skipped on the device"
    fi
fi

# keep one version of each package: two stop the whole install there
for name in $(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | sort | uniq -d); do
    ls -t "$DEST/$name"-*.whl | tail -n +2 | xargs rm -f
done

wheels_kib=$(du -sk "$DEST" | cut -f1)
tree_kib=$(( $(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}') / 1024 ))
total_mib=$(( (wheels_kib + tree_kib) / 1024 ))
echo "== $(ls "$DEST"/*.whl | wc -l) wheels in $DEST: $((wheels_kib / 1024)) MiB (${wheels_kib} KiB); with the tracked tree" \
     "($((tree_kib / 1024)) MiB) $total_mib MiB of the $LIMIT_MIB MiB a device call carries"
ls "$DEST"/*.whl | xargs -n1 basename | sed 's/^/  /'
if [ "$((wheels_kib + tree_kib))" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "!! over the carry limit: ${wheels_kib} KiB of wheels + ${tree_kib} KiB of tree > $((LIMIT_MIB * 1024)) KiB" >&2
    exit 1
fi
