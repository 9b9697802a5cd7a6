#!/usr/bin/env bash
# The benchmark suite at GPU sizes on one H100/H200 (333 s on an H200, install included).
#
#   bash bench/gpu.sh            # on the GPU machine, from anywhere in the repository
#
# Uses the machine's own Python (whose JAX has CUDA; override with PYTHON=...). Packages
# that Python lacks come from wheels in .whl/ when that folder exists (an offline machine:
# `pip download` them elsewhere, see the README), else from `pip install -e .`; the
# repository itself is put on PYTHONPATH, so the CUDA JAX that is there stays.
# Refuses to run without a GPU unless ALLOW_CPU=1 (a dry run of the script itself, at
# --quick sizes), and stops with exit 3 when bench/smoke.py fails (packages that don't fit). Each benchmark runs under its own time limit; one that fails or times out
# is recorded with its exit status and log, and the others still run. Writes
# bench/results/gpu/*.json, the logs bench/results/gpu/*.log, and
# bench/results/gpu.json = {"gpu": {bench: result}, "steps": {bench: {rc, seconds}}}
# (bench/gpu_results.py).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=bench/results/gpu
# Seconds for the steps after the smoke check; the optional steps add their own.
BUDGET=${GPU_BUDGET_S:-$(( 330 + 150 * ${GPU_METANET:-0} + 120 * ${GPU_CHUNKS:-0} ))}
# The memory sections measure fresh child processes: a parent holding JAX's default 75%
# preallocation of the GPU leaves them none (seen on an H100: CUDA out of memory).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log

need="import jax, flax, optax, orbax.checkpoint, chex, jraph, mnist1d, sklearn, matplotlib"
if ! "$PY" -c "$need" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/weightspace-site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/weightspace-site${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PY" -m pip install -q -e . || exit 3
  fi
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "$need; import hyper, metanets, generators" || exit 3

backend=$("$PY" -c "import jax; print(jax.default_backend())")
if [[ "$backend" != "gpu" && "${ALLOW_CPU:-0}" != "1" ]]; then
  echo "bench/gpu.sh: JAX backend is '$backend', not gpu (ALLOW_CPU=1 for a dry run)" >&2
  exit 2
fi
sizes=gpu
if [[ "$backend" != "gpu" ]]; then sizes=quick; fi
"$PY" -c "import jax, flax, optax, orbax.checkpoint as o; print('devices:', jax.devices(), \
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"

# Seconds, end to end: a machine whose package versions do not fit stops here (exit 3).
if ! timeout 120 "$PY" bench/smoke.py > "$OUT/smoke.txt" 2> "$OUT/smoke.log"; then
  echo "bench/gpu.sh: the smoke check failed (bench/results/gpu/smoke.log):" >&2
  tail -n 15 "$OUT/smoke.log" >&2
  exit 3
fi
cat "$OUT/smoke.txt"

start=$(date +%s)
# step NAME LIMIT_S CMD...: runs CMD under min(LIMIT_S, what is left of BUDGET), logging.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - start) ))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then
    echo "$name skipped 0" >> "$OUT/steps.txt"; echo "[gpu.sh] $name: skipped (budget)" >&2
    return
  fi
  local t0=$(date +%s)
  timeout "$limit" "$@" > /dev/null 2> "$OUT/$name.log"
  local rc=$?
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$OUT/steps.txt"
  echo "[gpu.sh] $name: exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s)" >&2
  if (( rc != 0 )); then tail -n 5 "$OUT/$name.log" >&2; fi
}
: > "$OUT/steps.txt"
# Limits from an H100 run (2026-11-27): scaling ~160 s without and ~55 s for its memory
# sections, hypernet 29 s, zoo 59 s, smoke 49 s. On an H200 (2026-12-04): smoke 50 s,
# scaling 193 s, hypernet 23 s, zoo 48 s; 333 s for the whole device call.
# Scaling sweep: zoo N up to 65,536 members (device memory at 1/4,096/65,536), generation
# M up to 65,536 and 4M-parameter targets, metanet batches up to 16,384 graphs.
step scaling 250 "$PY" bench/scaling.py --sizes "$sizes" --out "$OUT/scaling.json"
# Hypernet speed (the hyperlight peer runs only where its venv exists; else it is skipped).
step hypernet 45 "$PY" bench/hypernet.py --quick --out "$OUT/hypernet.json"
# Zoo training throughput and quality at --quick sizes.
step zoo 80 "$PY" bench/zoo.py --quick --out "$OUT/zoo.json"
# Metanet accuracy prediction (~2 min of compiles on a tiny zoo; its GPU throughput is in
# the scaling sweep) only when asked for: GPU_METANET=1.
if [[ "${GPU_METANET:-0}" == "1" ]]; then
  step metanet_predict 150 "$PY" bench/metanet_predict.py --quick --out "$OUT/metanet_predict.json"
fi
# Zoo speed and device memory against the member chunk (about 2 minutes): GPU_CHUNKS=1.
if [[ "${GPU_CHUNKS:-0}" == "1" ]]; then
  step member_chunk 180 "$PY" bench/member_chunk.py --sizes "$sizes" --out "$OUT/member_chunk.json"
fi

"$PY" bench/gpu_results.py "$OUT"   # writes bench/results/gpu.json
