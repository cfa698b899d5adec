#!/usr/bin/env bash
# The device check, for a machine with an NVIDIA GPU (one short run: about 8 minutes on an H200
# by its budget; nothing downloaded). It installs lmspec from this checkout without its
# dependencies (the machine's own torch, triton, jax, hypothesis, pytest-benchmark are used),
# then, on CUDA tensors:
#   1. conformance of the torch_triton backend on every component with a Triton kernel
#      (the kernels compiled for real and checked against the reference), and the kernel
#      tests (tests/kernels: each kernel at several tile sizes);
#   2. the benchmarks of those components against their peers, measured in the same run,
#      with the speed gates (results/gpu/bench.jsonl; the report in results/gpu/).
# Usage: scripts/gpu_check.sh            (writes into $OUT, else results/gpu)
# Dry run on a CPU: LMSPEC_TORCH_DEVICE=cpu LMSPEC_BENCH_QUICK=1 scripts/gpu_check.sh
set -uo pipefail
out="${OUT:-results/gpu}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
export LMSPEC_TORCH_DEVICE="${LMSPEC_TORCH_DEVICE:-cuda}"
kernels="rms_norm rope swiglu cross_entropy sdpa linear_attention lightning_attention"
kernels="$kernels quant_matmul moe_layer"

"$py" -c "import lmspec" 2>/dev/null \
  || "$py" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
  || { echo "gpu_check: could not install lmspec from this checkout" >&2; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} | tee "$out/device.txt"

tests=()
for k in $kernels; do tests+=("conformance/test_$k.py"); done
echo "== 1. conformance of torch_triton on $LMSPEC_TORCH_DEVICE: $kernels"
timeout 300 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" --backend torch_triton \
  --profile smoke --results "$out/conformance.jsonl" 2>&1 | tee "$out/conformance.log" | tail -40
conform=${PIPESTATUS[0]}

echo "== 1b. the kernels themselves at several tile sizes against the reference"
timeout 240 "$py" -m pytest -q -p no:cacheprovider tests/kernels/test_triton_sdpa.py \
  tests/kernels/test_triton_moe.py tests/kernels/test_triton_quant_matmul.py 2>&1 \
  | tee "$out/kernels.log" | tail -30
kernel_tests=${PIPESTATUS[0]}

echo "== 2. benchmarks against their peers (same run), with the gates"
quick=()
[ "${LMSPEC_BENCH_QUICK:-0}" = 1 ] && quick=(--quick)
timeout 420 "$py" -m lmspec.conformance.cli bench "${quick[@]}" \
  --backend torch_triton --component "${kernels// /,}" --results "$out" 2>&1 \
  | tee "$out/bench.log" | tail -60
bench=${PIPESTATUS[0]}
echo "gpu_check: conformance exit $conform, kernel tests exit $kernel_tests, bench exit $bench;" \
  "results in $out"
exit $(( conform != 0 || kernel_tests != 0 || bench != 0 ))
