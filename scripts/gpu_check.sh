#!/usr/bin/env bash
# GPU check of mode-parity on one CUDA GPU, in at most 5 minutes:
#   1. the GPU tests            python3 -m pytest -m gpu
#   2. the default study        parity study --device cuda          (target: <= 60 s on one H100)
#   3. the Linen speed-up       parity study --variants linen,linen_bug_emulated --linen-path loop,
#                               compared with step 2's Linen wall times (scan + vmap over seeds)
#   4. the parity check         parity check --precision both --device cuda (strict and default
#                               float32 policies side by side)
#   5. the benchmark            parity bench --device cuda --quick --json ... --plot ...
# and prints a summary table last. Exit 0 only if every step passed; any failure is printed in
# capitals and makes the exit code non-zero. Each step has a time limit (`timeout`).
#
# The GPU machine has python3 with torch, jax[cuda], flax, optax, scikit-learn, matplotlib, rich,
# hypothesis and pytest, but no mnist1d and no network. Prepare once, here, in the repository root
# (mnist1d is pure Python, a py3-none-any wheel; its requirements numpy, scipy, matplotlib and
# requests are already on the GPU image, so --no-deps is enough):
#
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl mnist1d==0.0.2.post1
#
# then run it there with `.whl` carried, e.g. with the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=420)
# Outputs go to $OUT (the device tool's folder) or ./gpu-check-out: gpu_check.log (every step's
# output), study/{results.json,curves.png,report.md}, bench.json, bench.png, summary.txt.
# The project is imported from the working tree (PYTHONPATH), not installed: an editable install
# would need setuptools from the network for build isolation.

set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
LOG="$OUT_DIR/gpu_check.log"
STEPS="$OUT_DIR/.steps.tsv"
LOOP_DIR="$(mktemp -d)"
export PYTHONUNBUFFERED=1

mkdir -p "$OUT_DIR" || { echo "GPU CHECK FAILED: cannot create $OUT_DIR" >&2; exit 2; }
: > "$LOG"
: > "$STEPS"

die() {
    echo "GPU CHECK FAILED: $*" | tee -a "$LOG" >&2
    exit 2
}

# ------------------------------------------------------------------------------ preconditions
echo "=== environment" | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" \
    || die "nvidia-smi failed: no NVIDIA GPU visible"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG" \
    || die "torch sees no CUDA GPU"
"$PY" -c "import jax; d = jax.devices('gpu'); print('jax', jax.__version__, d)" 2>&1 | tee -a "$LOG" \
    || die "jax sees no GPU (a CUDA build of jax is needed)"

if ! "$PY" -c "import mnist1d" 2>/dev/null; then
    compgen -G ".whl/mnist1d-*.whl" > /dev/null \
        || die "mnist1d is not installed and no .whl/mnist1d-*.whl was carried (see this script's header)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/mnist1d-*.whl 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip could not install the carried mnist1d wheel"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import parity, torch_impl, flax_impl, mnist1d, parity.commands.study; from parity.device import library_versions; print(library_versions())" 2>&1 | tee -a "$LOG" \
    || die "the project or mnist1d cannot be imported (PYTHONPATH=$PYTHONPATH)"

# --------------------------------------------------------------------------------------- steps
# step NAME LIMIT_S COMMAND...: run with a time limit, log, and record status and seconds.
step() {
    local name="$1" limit="$2"
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local start end rc status
    start=$(date +%s%N)
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    end=$(date +%s%N)
    case "$rc" in
        0) status=ok ;;
        124|137) status=TIMEOUT ;;
        *) status="FAILED(rc=$rc)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( (end - start) / 1000000 ))" "$limit" >> "$STEPS"
    [ "$status" = ok ] || echo "!!! STEP $name: $status" | tee -a "$LOG" >&2
}

step gpu-tests 60 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step study 90 "$PY" -m parity study --device cuda --out "$OUT_DIR/study" --no-progress
step study-linen-loop 30 "$PY" -m parity study --device cuda --variants linen,linen_bug_emulated \
    --linen-path loop --out "$LOOP_DIR" --no-progress
step check-both 45 "$PY" -m parity check --precision both --device cuda --json "$OUT_DIR/check.json"
step bench 80 "$PY" -m parity bench --device cuda --quick --json "$OUT_DIR/bench.json" --plot "$OUT_DIR/bench.png"

# ------------------------------------------------------------------------------------- summary
"$PY" - "$STEPS" "$OUT_DIR/study/results.json" "$LOOP_DIR/results.json" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, sys
from pathlib import Path

steps_file, study_file, loop_file = map(Path, sys.argv[1:])
print("\n================================ GPU CHECK SUMMARY ================================")
print(f"{'step':<20}{'status':<16}{'seconds':>9}{'limit':>8}")
failed = []
for line in steps_file.read_text().splitlines():
    name, status, ms, limit = line.split("\t")
    print(f"{name:<20}{status:<16}{int(ms) / 1000:>9.1f}{int(limit):>8}")
    if status != "ok":
        failed.append(name)

def load(p):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None

study, loop = load(study_file), load(loop_file)
if study:
    env = study["environment"]
    print(f"\nstudy: {study['config']['dataset']}, {study['config']['seeds']} seeds x {study['config']['epochs']} "
          f"epochs on {env['precision_settings'].get('torch_device_name')} ({env['device']}, "
          f"{env['precision']} float32, Linen path {env['linen_path']}); total {study['total_wall_time_s']:.1f} s "
          f"(target <= 60 s: {'met' if study['total_wall_time_s'] <= 60 else 'NOT MET'})")
    print(f"{'variant':<20}{'path':<7}{'acc % mean':>11}{'diverged':>10}{'audit ok':>10}{'wall s':>9}")
    for v, s in study["summary"].items():
        print(f"{v:<20}{s['path']:<7}{100 * s['final_acc']['mean']:>11.2f}{s['diverged']:>7}/{s['seeds']:<2}"
              f"{str(s['audit']['as_expected']):>10}{s['wall_time_s']:>9.1f}")
    if not all(s["audit"]["as_expected"] for s in study["summary"].values()):
        failed.append("study-audit")
    if loop:
        for v in ("linen", "linen_bug_emulated"):
            a, b = loop["variants"].get(v), study["variants"].get(v)
            if a and b:
                print(f"Linen {v}: loop of jitted steps {a['wall_time_s']:.1f} s, study's path ({b['path']}) "
                      f"{b['wall_time_s']:.1f} s: speed-up {a['wall_time_s'] / b['wall_time_s']:.1f}x "
                      "(both include compilation)")
    else:
        print("Linen speed-up: not measured (the loop-path study did not finish)")
else:
    print("\nstudy: NO RESULTS (see gpu_check.log)")
    failed.append("study-results")
if failed:
    print(f"\nGPU CHECK FAILED: {', '.join(dict.fromkeys(failed))}")
    sys.exit(1)
print("\nGPU CHECK PASSED")
EOF
rc=${PIPESTATUS[0]}
rm -rf "$LOOP_DIR" "$STEPS"
exit "$rc"
