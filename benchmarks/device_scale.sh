#!/usr/bin/env bash
# The scale shape of issue 17 on a many-core machine that reaches nothing outside itself (the device
# machine: 16 cores), in under 10 minutes: benchmarks/device_scale.py with 1 worker and one for every two CPUs.
#
#   benchmarks/device_scale.sh pack            # here: .device/env.tar.xz (Python 3.11 and the packages)
#   benchmarks/device_scale.sh run [ARGS...]   # there: unpack it if needed, then device_scale.py ARGS
#
# The .venv (about 1.2 GB) cannot travel (the working tree that travels is 64 MiB at most), and the
# machine may have no Python 3.11 and cannot install one. So `pack` makes one archive of what the
# scale run imports: the interpreter this .venv was made from (without its tests and site-packages)
# and the .venv's site-packages without what the run never imports (browsers, dataframes, type
# checkers, litellm's proxy...). `run` unpacks it under /tmp, points the editable install at this
# checkout wherever it lies, and runs with that interpreter; a .venv that works there (carried, or
# made by scripts/setup) is used instead. The archive also holds the Go load generator (sgload,
# benchmarks/loadgen), built static. Carry `.device` (ignored by git) with the run:
#
#   run(command="benchmarks/device_scale.sh run --out $OUT", carry=[".device"], timeout_s=600)
#
# `run` with --small (or any device_scale.py flags) works here too, which is how it is tested;
# DEVICE_ENV=/tmp/somewhere makes it use the archive (unpacked there) even where the .venv works.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_OFFLINE_MODE=true HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# Never imported by the scale run (checked: `run --small` passes with the archive alone).
EXCLUDE=(
  --exclude='__pycache__' --exclude='*.pyc' --exclude='playwright' --exclude='_polars_runtime*'
  --exclude='polars*' --exclude='numpy*' --exclude='botocore*' --exclude='boto3*' --exclude='mypy*'
  --exclude='*__mypyc*' --exclude='mypyc' --exclude='granian*' --exclude='azure*' --exclude='asyncpg*'
  --exclude='psycopg*' --exclude='pip' --exclude='pip-*' --exclude='setuptools*' --exclude='hf_xet*'
  --exclude='pygments*' --exclude='pyroscope*' --exclude='litellm/proxy' --exclude='litellm/rust_bridge'
  --exclude='pandas*' --exclude='_pytest' --exclude='pytest*' --exclude='ruff*' --exclude='fakeredis*'
  --exclude='test' --exclude='tests' --exclude='idlelib' --exclude='tkinter' --exclude='turtledemo'
  --exclude='ensurepip' --exclude='lib2to3' --exclude='config-3.11-*'
)

pack() {
  local python base site
  python=$(readlink -f .venv/bin/python)
  base=$(cd "$(dirname "$python")/.." && pwd)
  site=.venv/lib/python3.11/site-packages
  mkdir -p .device
  grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >>.git/info/exclude
  echo "pack: $base (interpreter) and $site, trimmed"
  tar -cf - "${EXCLUDE[@]}" --exclude='site-packages' --transform="s#^${base#/}#python#" \
    "$base/bin/python3.11" "$base/lib/libpython3.11.so.1.0" "$base/lib/python3.11" 2>/dev/null \
    >.device/env.tar
  tar -rf .device/env.tar "${EXCLUDE[@]}" --transform="s#^${site}#site#" "$site"
  # The system libraries the interpreter's and the packages' extensions link to (OpenSSL, libffi,
  # SQLite...), in case the machine lacks one: used there only if an import fails without them.
  rm -rf .device/fallback-lib && mkdir -p .device/fallback-lib
  find "$base/lib/python3.11/lib-dynload" "$site" -name '*.so*' ! -name '_tkinter*' ! -name '_curses*' \
    ! -name 'readline*' ! -path '*/playwright/*' ! -path '*/polars*' ! -path '*/numpy*' -print0 |
    xargs -0 ldd 2>/dev/null |
    awk '$2 == "=>" && $3 ~ /^\/(usr\/)?lib/ {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libmvec|libpthread|librt|libdl|libutil|libresolv|libnsl|libcrypt|ld-linux[^/]*)\.so' |
    xargs -r cp -L -t .device/fallback-lib
  tar -rf .device/env.tar --transform='s#^.device/fallback-lib#fallback-lib#' .device/fallback-lib
  rm -rf .device/fallback-lib
  # The Go load generator (benchmarks/loadgen), static: the machine there has no Go.
  (cd benchmarks/loadgen && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/.device/sgload" .)
  tar -rf .device/env.tar --transform='s#^.device/##' .device/sgload
  xz -T0 -6 -f .device/env.tar
  echo "pack: $(du -m .device/env.tar.xz | cut -f1) MiB in .device/env.tar.xz (with the tree: under 64 MiB)"
}

python_here() {
  # A Python with everything: a working .venv, else the carried archive, unpacked once under /tmp.
  if [ -z "${DEVICE_ENV:-}" ] && .venv/bin/python -c 'import streamgate.core, aiohttp, grpc' 2>/dev/null; then
    PY=$root/.venv/bin/python
    return
  fi
  [ -f .device/env.tar.xz ] || { echo "no working .venv and no .device/env.tar.xz: run 'pack' where the .venv works" >&2; exit 1; }
  local env=${DEVICE_ENV:-/tmp/streamgate-device-env}
  if [ ! -x $env/python/bin/python3.11 ]; then
    mkdir -p $env && tar -xJf .device/env.tar.xz -C $env
  fi
  # The editable install names the checkout it was made in: point it at this one.
  sed -i "s#'[^']*/\(src/streamgate\|bridges\|clients/python\|core\|bridges/static\)'#'$root/\1'#g" \
    $env/site/__editable___streamgate_*_finder.py
  mkdir -p $env/boot
  # Every Python process of the run (servers, clients) adds the packages, .pth files included.
  echo "import site; site.addsitedir('$env/site')" >$env/boot/sitecustomize.py
  export PYTHONPATH=$env/boot PYTHONHOME=$env/python LD_LIBRARY_PATH=$env/python/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  PY=$env/python/bin/python3.11
  export SGLOAD=$env/sgload
  local check='import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, grpc, aiohttp, uvloop, tiktoken, streamgate.core'
  if ! $PY -c "$check" 2>/dev/null; then
    echo "run: the machine lacks a library the packages link to: adding the packed ones" >&2
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$env/fallback-lib
    $PY -c "$check"
  fi
}

case "${1:-}" in
  pack) pack ;;
  run)
    shift
    out=""
    args=()
    while [ $# -gt 0 ]; do
      if [ "$1" = "--out" ]; then out=$2; shift 2; else args+=("$1"); shift; fi
    done
    python_here
    python=$PY
    echo "run: $python on $(nproc) CPUs: benchmarks.device_scale ${args[*]:-}"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    if [ -n "$out" ]; then
      "$python" -m benchmarks.device_scale "${args[@]}" | tee "$out/scale.md"
      cp benchmarks/results/scale-*.md "$out/" 2>/dev/null || true
    else
      "$python" -m benchmarks.device_scale "${args[@]}"
    fi
    ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
