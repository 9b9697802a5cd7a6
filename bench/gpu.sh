#!/usr/bin/env bash
# The benchmark suite at GPU sizes on one H100/H200, in under 5 minutes.
#
#   bash bench/gpu.sh            # on the GPU machine, from anywhere in the repository
#
# Uses the machine's own Python (whose JAX has CUDA; override with PYTHON=...), installs
# weightspace into it if needed (pip keeps the CUDA JAX that is there), refuses to run
# without a GPU unless ALLOW_CPU=1 (a dry run of the script itself, at --quick sizes), and
# writes bench/results/gpu/*.json plus bench/results/gpu.json = {"gpu": {bench: result}}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench/results/gpu
mkdir -p "$OUT"

if ! "$PY" -c "import hyper, jraph, orbax.checkpoint" 2>/dev/null; then
  "$PY" -m pip install -q -e .
fi
backend=$("$PY" -c "import jax; print(jax.default_backend())")
if [[ "$backend" != "gpu" && "${ALLOW_CPU:-0}" != "1" ]]; then
  echo "bench/gpu.sh: JAX backend is '$backend', not gpu (ALLOW_CPU=1 for a dry run)" >&2
  exit 2
fi
sizes=gpu; quick=""
if [[ "$backend" != "gpu" ]]; then sizes=quick; quick="--quick"; fi
"$PY" -c "import jax; print('devices:', jax.devices())"

start=$(date +%s)
# Scaling sweep: zoo N up to 65,536 members, generation M up to 65,536 and 4M-param targets.
timeout 200 "$PY" bench/scaling.py --sizes "$sizes" --out "$OUT/scaling.json" > /dev/null
# Hypernet speed (the hyperlight peer runs only where its venv exists; else it is skipped).
timeout 60 "$PY" bench/hypernet.py --quick --out "$OUT/hypernet.json" > /dev/null
# Zoo training throughput and quality at --quick sizes.
timeout 60 "$PY" bench/zoo.py --quick --out "$OUT/zoo.json" > /dev/null
# Graph metanetwork throughput, when that benchmark exists.
if [[ -f bench/metanet_predict.py ]]; then
  timeout 60 "$PY" bench/metanet_predict.py --quick --out "$OUT/metanet_predict.json" > /dev/null
fi
"$PY" - "$OUT" "$(( $(date +%s) - start ))" "$quick" <<'PYEOF'
import json, pathlib, sys
out, wall = pathlib.Path(sys.argv[1]), int(sys.argv[2])
runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
result = {"gpu": runs, "wall_s": wall, "dry_run_on_cpu": bool(sys.argv[3])}
(out.parent / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({"gpu": sorted(runs), "wall_s": wall}))
PYEOF
