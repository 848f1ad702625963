#!/usr/bin/env bash
# GPU benchmarks on a machine that has PyTorch (CUDA) but no internet access, e.g. a GPU box of a hospital or a
# lent accelerator with a PyTorch image. Two steps:
#
#   benchmarks/offline_gpu.sh download [PYTHON_VERSION]   # here, with PyPI access: wheels into .whl/ (git-ignored)
#   benchmarks/offline_gpu.sh run [OUT_DIR [RUN_ARGS...]]  # there, in a copy of the repo holding .whl/
#
# `download` fetches segzoo's pure-Python runtime packages that a PyTorch image usually lacks (MONAI, nibabel,
# pydicom, jsonargparse and its helpers, nnU-Net's dynamic-network-architectures for the peer) for the target
# Python (default 3.12). `run` installs them without an index into /tmp/segzoo-site, then runs
# `benchmarks/run.py --device cuda` (train step, 2D nets, whole-case inference, the 600-slice memory check, then the
# data path) with results and the regenerated page in OUT_DIR (default: $OUT if set, else a temporary folder) and
# packs them into OUT_DIR/results.tgz; copy its files into benchmarks/results/ and run
# `.venv/bin/python benchmarks/run.py --docs-only` to put the GPU rows on docs/benchmarks.md.
# RUN_ARGS replace the default `--device cuda --only ...` (e.g. a dry run here: `PYTHON=.venv/bin/python
# benchmarks/offline_gpu.sh run /tmp/x --device cpu --quick --only train_step`); PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
PACKAGES=(monai nibabel pydicom jsonargparse docstring-parser typeshed-client importlib-resources
  dynamic-network-architectures)

case "${1:-}" in
download)
  pyver="${2:-3.12}"
  mkdir -p "$WHEELS"
  pins=()
  for name in "${PACKAGES[@]}"; do
    # the version tested here (constraints.txt) where it pins one
    pin=$(grep -i -E "^${name//-/[-_]}==" constraints.txt || true)
    pins+=("${pin:-$name}")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation py \
    --platform any -d "$WHEELS" "${pins[@]}" 2>/dev/null ||
    python3 -m pip download -q --no-deps --python-version "$pyver" -d "$WHEELS" "${pins[@]}"
  ls -1 "$WHEELS"
  ;;
run)
  out="${2:-${OUT:-$(mktemp -d)}}"
  shift $(($# < 2 ? $# : 2))
  args=("$@")
  [ ${#args[@]} -gt 0 ] || args=(--device cuda --only train_step inference inference_mem nets2d data)
  py="${PYTHON:-python3}"
  mkdir -p "$out"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segzoo-site \
    "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/segzoo-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if [[ " ${args[*]} " == *" --device cuda "* ]]; then
    "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
  fi
  status=0
  "$py" benchmarks/run.py --out "$out/results" --docs "$out/results/benchmarks.md" "${args[@]}" || status=$?
  tar czf "$out/results.tgz" -C "$out/results" .
  echo "results in $out/results.tgz (exit $status)"
  exit "$status"
  ;;
*)
  sed -n '2,17p' "$0"
  exit 2
  ;;
esac
