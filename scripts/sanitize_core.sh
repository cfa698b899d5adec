#!/usr/bin/env bash
# bpe_fast's C core (backends/bpe_fast/_core.c) under AddressSanitizer and UBSan: build it
# instrumented in place of the installed module, run its tests and bpe_fast's tokenizer
# conformance on it, and put the installed module back whatever happens. A memory error or
# undefined behaviour aborts the run. .ci/run calls it; by hand: bash scripts/sanitize_core.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CC=${CC:-gcc}

so=$($PY -c "import lmspec.backends.bpe_fast._core as c; print(c.__file__)")
inc=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
asan=$($CC -print-file-name=libasan.so)
ubsan=$($CC -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
  [ -f "$lib" ] || { echo "sanitize_core: $CC has no $lib (install its sanitizer runtime)" >&2; exit 1; }
done

keep=$(mktemp -d)
cp "$so" "$keep/core.so"
trap 'cp "$keep/core.so" "$so"; rm -rf "$keep"' EXIT
"$CC" -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer -fPIC -shared -I"$inc" backends/bpe_fast/_core.c -o "$so"

export LD_PRELOAD="$asan:$ubsan" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc
# the instrumented module must import: its tests would skip, not fail, without it
$PY -c "import lmspec.backends.bpe_fast._core"
# -s: pytest must not capture the sanitizer's report, which it writes as the process dies
$PY -m pytest -q -s -p no:cacheprovider tests/backends/test_bpe_fast_core.py \
  tests/backends/test_bpe_fast_pretokenize.py conformance/test_tokenizer.py --backend bpe_fast
