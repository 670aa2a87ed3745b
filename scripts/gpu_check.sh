#!/usr/bin/env bash
# GPU check of mode-parity on one CUDA GPU, in at most TOTAL_LIMIT_S = 550 s (9 min 10 s):
#   env            torch and jax see the GPU, the project and mnist1d import, and the precision
#                  probe (parity.device.precision_probe) under both policies -> probe.json
#   gpu-tests      python -m pytest -m gpu -s                  (prints the probe, worst strict values)
#   study          parity study --device cuda                  (target: <= 60 s on one H100)
#   study-linen-loop  parity study --variants linen,linen_bug_emulated --linen-path loop, compared
#                  with the study's Linen wall times (scan + vmap over seeds)
#   check-both     parity check --device cuda --precision both -> check.json
#   bench          parity bench --device cuda --quick (digits; batch 128 and 8192) -> bench.json
#   bench-compile  parity bench --device cuda --quick --styles torch_compile --batch-sizes 128:
#                  torch.compile once (--quick skips it unless it is named)
#   data-parallel  parity check --device cuda --data-parallel N --models digits (N = the GPUs, at
#                  most 2: nccl ranks and jax's real devices) -> data-parallel.json; with one
#                  GPU, N = 1 and first `--data-parallel 2` / `study --devices 2` must be refused
#                  with one line (exit 2) before any work
# A row of the summary table is printed (and appended to summary.txt) as each step finishes, and
# the whole table at the end, also when a step timed out or the script is interrupted. Exit 0
# only if every step passed; a failure is printed in capitals and makes the exit code non-zero.
#
# Time limits (seconds), from idle CPU dry runs (`--dry-run`, 2-core AMD EPYC box, 2026-11-30,
# 09:58 UTC: env 9, gpu-tests 12 with the 5 CUDA tests skipped, study 58, study-linen-loop 19,
# check-both 55, bench 40, bench-compile 44; 236 s in all, every step passed; an earlier run at
# 07:50 stopped check-both at its old 50 s limit) and the XLA compiles they count per step
# ("compiles" asked for, persistent-cache "hits"; check-both asks for 326, most of them NNX's
# eager op-by-op ones), with room on the GPU for the CUDA tests (~50 compiles) and the
# default-size study:
#   env 20, gpu-tests 80, study 85, study-linen-loop 30, check-both 120, bench 60,
#   bench-compile 65 (two cold Inductor compiles: the gate's and the timed model's),
#   data-parallel 90 (idle CPU dry run 2026-11-30, 11:56 UTC: 49 s for 2 gloo ranks and a
#   2-device jax child; on a GPU add the nccl start and the child's GPU compiles)  = 550 s.
# A step also never runs past the total: it gets what is left of TOTAL_LIMIT_S, and is SKIPPED
# when less than 10 s is left; a timed-out step gets Ctrl-C, then SIGKILL 10 s later, so the
# script ends within ~560 s, under 9 min 30 s. `--limit-scale N` multiplies every limit and the
# total (for a loaded CPU box). One persistent jax compilation cache (a temporary directory, min
# compile time 0, no minimum entry size) is shared by all steps, so a computation compiled once
# (the tests' models, the probe, `check`'s strict policy) is read back by the later steps.
#
# Usage:
#   bash scripts/gpu_check.sh                   # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run         # the same steps on the CPU (--device cpu; studies
#                                               # on digits, 2 seeds x 2 epochs), same summary
#   bash scripts/gpu_check.sh --steps study,bench   # rerun only some steps (names as above)
#   bash scripts/gpu_check.sh --dry-run --limit-scale 4   # on a loaded CPU box
#
# The GPU machine has python3 with torch, jax[cuda], flax, optax, scikit-learn, matplotlib, rich,
# hypothesis, pytest and requests, but no mnist1d and no network. Prepare once, here, in the
# repository root (mnist1d is a py3-none-any wheel; --no-deps, its requirements are on the image):
#
#   mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl mnist1d==0.0.2.post1
#
# then run it there with `.whl` carried, with the device tool (10 minutes per command at most):
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=590)
# timeout_s 590 = the 550 s total + 10 s SIGKILL grace + 30 s of margin; a rerun of one
# step: run(command="bash scripts/gpu_check.sh --steps check-both", carry=[".whl"], timeout_s=150).
# Outputs go to $OUT (the device tool's folder) or ./gpu-check-out: gpu_check.log (every step's
# output), summary.txt, probe.json, study/, study-linen-loop/, check.json, bench.json, bench.png,
# bench-compile.json, data-parallel.json. The project is imported from the working tree (PYTHONPATH), not installed.

set -uo pipefail
cd "$(dirname "$0")/.."

# The whole body is one { ... } block: bash parses it before running any of it, so editing this
# file while it runs cannot change what the running copy does.
{
MODE=gpu
ONLY=""
SCALE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run | --cpu) MODE=cpu ;;
        --steps)
            [ $# -ge 2 ] || { echo "gpu_check.sh: --steps needs a comma-separated list" >&2; exit 2; }
            ONLY="$2"
            shift
            ;;
        --limit-scale)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: --limit-scale needs a whole number >= 1" >&2; exit 2; }
            SCALE="$2"
            shift
            ;;
        -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

TOTAL_LIMIT_S=$((550 * SCALE))
STEP_NAMES=(env gpu-tests study study-linen-loop check-both bench bench-compile data-parallel)
declare -A LIMIT=([env]=20 [gpu-tests]=80 [study]=85 [study-linen-loop]=30 [check-both]=120
    [bench]=60 [bench-compile]=65 [data-parallel]=90)
for s in "${STEP_NAMES[@]}"; do LIMIT[$s]=$((LIMIT[$s] * SCALE)); done
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        [ -n "${LIMIT[$s]:-}" ] || { echo "gpu_check.sh: unknown step $s; steps: ${STEP_NAMES[*]}" >&2; exit 2; }
    done
fi

PY="${PYTHON:-python3}"
if [ "$MODE" = gpu ]; then
    DEVICE=cuda
    OUT_DIR="${OUT:-$PWD/gpu-check-out}"
else
    DEVICE=cpu
    OUT_DIR="${OUT:-$PWD/gpu-check-dry-run}"
fi
LOG="$OUT_DIR/gpu_check.log"
SUMMARY="$OUT_DIR/summary.txt"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || { echo "GPU CHECK FAILED: mktemp" >&2; exit 2; }
STEPS="$WORK/steps.tsv"
STEP_PID=""
START_S=$(date +%s)

export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false # torch and jax share the GPU
export JAX_COMPILATION_CACHE_DIR="$WORK/jax-cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache"

print_table() {
    [ -s "$STEPS" ] || return 0
    printf '\n%-18s%-16s%9s%7s%10s%7s\n' step status seconds limit compiles hits
    while IFS=$'\t' read -r name status ms limit compiles hits; do
        printf '%-18s%-16s%9.1f%7s%10s%7s\n' "$name" "$status" "$(awk "BEGIN{print $ms/1000}")" \
            "$limit" "$compiles" "$hits"
    done < "$STEPS"
}

cleanup() {
    if [ -n "$STEP_PID" ] && kill -0 "$STEP_PID" 2>/dev/null; then
        kill -INT "$STEP_PID" 2>/dev/null # timeout(1) passes it on to the step's command
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$STEP_PID" 2>/dev/null && sleep 1; done
        kill -KILL "$STEP_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
on_signal() {
    trap - INT TERM
    { echo "GPU CHECK INTERRUPTED ($1) after $(($(date +%s) - START_S)) s; steps so far:"; print_table; } \
        | tee -a "$SUMMARY" >&2
    exit 130
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

mkdir -p "$OUT_DIR" || { echo "GPU CHECK FAILED: cannot create $OUT_DIR" >&2; exit 2; }
: > "$LOG"
: > "$SUMMARY"
: > "$STEPS"

die() {
    echo "GPU CHECK FAILED: $*" | tee -a "$LOG" "$SUMMARY" >&2
    exit 2
}

# ------------------------------------------------------------------------------ preconditions
echo "=== gpu_check.sh mode $MODE (device $DEVICE), total limit ${TOTAL_LIMIT_S} s, out $OUT_DIR" | tee -a "$LOG"
if [ "$MODE" = gpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 \
        | tee -a "$LOG" || die "nvidia-smi failed: no NVIDIA GPU visible"
fi
"$PY" -c "import requests" 2>/dev/null \
    || die "python package 'requests' is missing: mnist1d imports it (mnist1d/data.py). Install it, or carry its wheels: python3 -m pip download -d .whl requests"
if ! "$PY" -c "import mnist1d" 2>/dev/null; then
    compgen -G ".whl/mnist1d-*.whl" > /dev/null \
        || die "mnist1d is not installed and no .whl/mnist1d-*.whl was carried (see this script's header)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .whl/mnist1d-*.whl 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "pip could not install the carried mnist1d wheel"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Runs `python -m MODULE ARGS...` and writes the XLA compiles it asked for (and how many the
# persistent cache answered) to $GPU_CHECK_COUNTS at exit, also after Ctrl-C (timeout's INT).
COUNT_PY='
import atexit, json, os, runpy, sys
from jax import monitoring
counts = {"compiles": 0, "cache_hits": 0}
def on_duration(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        counts["compiles"] += 1
def on_event(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        counts["cache_hits"] += 1
monitoring.register_event_duration_secs_listener(on_duration)
monitoring.register_event_listener(on_event)
def dump():
    with open(os.environ["GPU_CHECK_COUNTS"], "w") as f:
        json.dump(counts, f)
atexit.register(dump)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'

# The env step: both frameworks see the device, everything imports, the precision probe.
ENV_PY='
import sys
device, out = sys.argv[1], sys.argv[2]
import torch
if device == "cuda":
    assert torch.cuda.is_available(), "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    print("torch", torch.__version__, torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
import jax
print("jax", jax.__version__, jax.devices("gpu" if device == "cuda" else "cpu"))
import flax_impl, mnist1d, parity.commands.study, torch_impl
from parity.device import configure, library_versions, precision_probe
from parity.io import atomic_write_json
print(library_versions())
probe = {p: precision_probe(configure(device, p)) for p in ("strict", "default")}
atomic_write_json(out, probe)
for p, r in probe.items():
    rows = [(f + "." + op, r[f][op]) for f in ("torch", "jax") for op in ("matmul", "conv")]
    kinds = ", ".join("%s %s (rel err %.1e)" % (k, v["result"], v["max_rel_err"]) for k, v in rows)
    print("precision probe,", p + ":", kinds, "as expected" if r["as_expected"] else "NOT AS EXPECTED")
'

# The data-parallel step: the refusals a one-GPU machine must give, then the check itself.
DP_PY='
import subprocess, sys
device, out = sys.argv[1], sys.argv[2]
import torch
gpus = torch.cuda.device_count() if device == "cuda" else 0
n = min(gpus, 2) if device == "cuda" else 2
parity = [sys.executable, "-m", "parity"]
if device == "cuda" and gpus == 1:
    for argv in (["check", "--data-parallel", "2"], ["study", "--devices", "2"]):
        p = subprocess.run(parity + argv + ["--device", "cuda"], capture_output=True, text=True, timeout=60)
        lines = p.stderr.strip().splitlines() or [""]
        print(" ".join(argv), "-> exit", p.returncode, lines[-1], f"({len(lines) - 1} other stderr lines)")
        # the refusal is the last line; library start-up chatter (the XLA C++ log) may come before it
        ok = p.returncode == 2 and "needs 2 GPUs" in lines[-1] and "Traceback" not in p.stderr
        assert ok, "not refused clearly"
print(f"data-parallel check on {n} {device} replica(s)", flush=True)
cmd = ["check", "--device", device, "--data-parallel", str(n), "--models", "digits", "--json", out]
sys.exit(subprocess.run(parity + cmd, timeout=600).returncode)
'

# --------------------------------------------------------------------------------------- steps
printf '%-18s%-16s%9s%7s%10s%7s\n' step status seconds limit compiles hits >> "$SUMMARY"

# What each step writes under $OUT_DIR: removed before the step runs, so that the summary never
# reads a previous run's results.
declare -A OUTPUTS=([env]="probe.json" [gpu-tests]="" [study]="study" [study-linen-loop]="study-linen-loop"
    [check-both]="check.json" [bench]="bench.json bench.png" [bench-compile]="bench-compile.json"
    [data-parallel]="data-parallel.json")

# step NAME COMMAND...: run with its time limit (capped by what is left of the total), log,
# record status, seconds and compile counts, and print the step's summary row.
step() {
    local name="$1"
    shift
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
    for f in ${OUTPUTS[$name]}; do rm -rf "${OUT_DIR:?}/$f"; done
    local limit="${LIMIT[$name]}" left=$((TOTAL_LIMIT_S - ($(date +%s) - START_S) - 5))
    [ "$left" -lt "$limit" ] && limit="$left"
    local status rc start end counts="$WORK/counts-$name.json" compiles=- hits=-
    start=$(date +%s%N)
    if [ "$limit" -lt 10 ]; then
        status="SKIPPED(time)"
    else
        local shown="$*"
        [ "${2:-}" = -c ] && [ "${3:-}" = "$COUNT_PY" ] && shown="$1 -m ${*:4}"
        [ "${2:-}" = -c ] && [ "${3:-}" = "$ENV_PY" ] && shown="$1 -c ENV_PY ${*:4}"
        [ "${2:-}" = -c ] && [ "${3:-}" = "$DP_PY" ] && shown="$1 -c DP_PY ${*:4}"
        echo "=== $name (limit ${limit} s): $shown" | tee -a "$LOG"
        GPU_CHECK_COUNTS="$counts" timeout --signal=INT --kill-after=10 "$limit" "$@" > >(tee -a "$LOG") 2>&1 &
        STEP_PID=$!
        wait "$STEP_PID"
        rc=$?
        STEP_PID=""
        case "$rc" in
            0) status=ok ;;
            124 | 137) status=TIMEOUT ;;
            *) status="FAILED(rc=$rc)" ;;
        esac
    fi
    end=$(date +%s%N)
    if [ -s "$counts" ]; then
        compiles=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['compiles'])" "$counts")
        hits=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['cache_hits'])" "$counts")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(((end - start) / 1000000))" "$limit" \
        "$compiles" "$hits" >> "$STEPS"
    tail -n 1 "$STEPS" | while IFS=$'\t' read -r n s ms l c h; do
        printf '%-18s%-16s%9.1f%7s%10s%7s\n' "$n" "$s" "$(awk "BEGIN{print $ms/1000}")" "$l" "$c" "$h"
    done | tee -a "$SUMMARY" | sed 's/^/### row: /'
    [ "$status" = ok ] || echo "!!! STEP $name: $status" | tee -a "$LOG" >&2
}

COUNTED=("$PY" -c "$COUNT_PY")
if [ "$MODE" = gpu ]; then
    TESTS=(-m gpu tests)
    STUDY_SIZE=()                             # the default study: mnist1d, 8 seeds x 30 epochs
    STUDY_PATH=()                             # auto: vmap over seeds on a GPU
else
    TESTS=(tests/test_device.py tests/test_gpu.py) # the probe and the pin; the gpu tests skip
    STUDY_SIZE=(--dataset digits --seeds 2 --epochs 2) # same compiles as mnist1d's, fewer steps
    STUDY_PATH=(--linen-path vmap) # the GPU's auto path, so the loop step compares the same two
fi

step env "$PY" -c "$ENV_PY" "$DEVICE" "$OUT_DIR/probe.json"
step gpu-tests "${COUNTED[@]}" pytest -q -s -p no:cacheprovider "${TESTS[@]}"
step study "${COUNTED[@]}" parity study --device "$DEVICE" "${STUDY_SIZE[@]}" "${STUDY_PATH[@]}" \
    --out "$OUT_DIR/study" --no-progress
step study-linen-loop "${COUNTED[@]}" parity study --device "$DEVICE" "${STUDY_SIZE[@]}" \
    --variants linen,linen_bug_emulated --linen-path loop --out "$OUT_DIR/study-linen-loop" --no-progress
step check-both "${COUNTED[@]}" parity check --device "$DEVICE" --precision both --json "$OUT_DIR/check.json"
step bench "${COUNTED[@]}" parity bench --device "$DEVICE" --quick --models digits \
    --json "$OUT_DIR/bench.json" --plot "$OUT_DIR/bench.png"
step bench-compile "${COUNTED[@]}" parity bench --device "$DEVICE" --quick --models digits \
    --styles torch_compile --batch-sizes 128 --json "$OUT_DIR/bench-compile.json"
step data-parallel "$PY" -c "$DP_PY" "$DEVICE" "$OUT_DIR/data-parallel.json"

# ------------------------------------------------------------------------------------- summary
timeout 60 "$PY" - "$MODE" "$STEPS" "$OUT_DIR" "$TOTAL_LIMIT_S" "$(($(date +%s) - START_S))" <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path

mode, steps_file, out, total_limit, total_s = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), *map(int, sys.argv[4:])
title = "GPU CHECK SUMMARY" if mode == "gpu" else "GPU CHECK SUMMARY (dry run on the CPU)"
print(f"\n================================ {title} ================================")
print(f"{'step':<18}{'status':<16}{'seconds':>9}{'limit':>7}{'compiles':>10}{'hits':>7}")
failed = []
for line in steps_file.read_text().splitlines():
    name, status, ms, limit, compiles, hits = line.split("\t")
    print(f"{name:<18}{status:<16}{int(ms) / 1000:>9.1f}{limit:>7}{compiles:>10}{hits:>7}")
    if status != "ok":
        failed.append(name)
print(f"total {total_s} s (limit {total_limit} s)")


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


probe = load("probe.json")
if probe:
    for policy, r in probe.items():
        kinds = ", ".join(f"{f}.{op} {r[f][op]['result']}" for f in ("torch", "jax") for op in ("matmul", "conv"))
        print(f"precision probe {policy:<8}{kinds}: {'as expected' if r['as_expected'] else 'NOT AS EXPECTED'}")
        if not r["as_expected"]:
            failed.append(f"probe-{policy}")

study, loop = load("study/results.json"), load("study-linen-loop/results.json")
if study:
    env, cfg = study["environment"], study["config"]
    print(f"\nstudy: {cfg['dataset']}, {cfg['seeds']} seeds x {cfg['epochs']} epochs on "
          f"{env.get('precision_settings', {}).get('torch_device_name')} ({env['device']}, {env['precision']} "
          f"float32, Linen path {env['linen_path']}); total {study['total_wall_time_s']:.1f} s"
          + (f" (target <= 60 s: {'met' if study['total_wall_time_s'] <= 60 else 'NOT MET'})" if mode == "gpu" else ""))
    print(f"{'variant':<20}{'path':<7}{'acc % mean':>11}{'diverged':>10}{'audit ok':>10}{'wall s':>9}")
    for v, s in study["summary"].items():
        print(f"{v:<20}{s['path']:<7}{100 * s['final_acc']['mean']:>11.2f}{s['diverged']:>7}/{s['seeds']:<2}"
              f"{str(s['audit']['as_expected']):>10}{s['wall_time_s']:>9.1f}")
    if any(s["audit"]["as_expected"] is False for s in study["summary"].values()):
        failed.append("study-audit")
    for v in ("linen", "linen_bug_emulated"):
        a, b = (loop or {}).get("variants", {}).get(v), study["variants"].get(v)
        ra = ((a or {}).get("timing") or {}).get("steady_steps_per_s")
        rb = ((b or {}).get("timing") or {}).get("steady_steps_per_s")
        if ra and rb:
            print(f"Linen {v}: loop of jitted steps {ra:.0f} steps/s, study's path ({b['path']}) "
                  f"{rb:.0f} steps/s: steady-state speed-up {rb / ra:.1f}x (compilation excluded)")
        else:
            print(f"Linen {v} speed-up: not measured")
elif "study" in {l.split(chr(9))[0] for l in steps_file.read_text().splitlines()}:
    print("\nstudy: NO RESULTS (see gpu_check.log)")
    failed.append("study-results")

check = load("check.json")
if check:
    worst = {}
    for c in check["checks"]:
        if c.get("precision", "strict") == "strict" and (c["value"] or 0) >= worst.get(c["check"], {"value": -1})["value"]:
            worst[c["check"]] = c
    print(f"\nparity check on {check['device']} ({', '.join(check['precisions'])}): "
          f"{'PASS' if check['passed'] else 'FAIL'}; worst strict values (for measured GPU bounds):")
    for name, c in sorted(worst.items()):
        value = "null" if c["value"] is None else f"{c['value']:.3e}"
        print(f"  {name:<36}{value:>11}  tolerance {c['tolerance']:.0e}  ({c['model']}, {c['framework']})")
    if "precision_probe" not in check:
        print("  (check.json has no precision_probe yet; probe.json above has it)")

for name in ("bench.json", "bench-compile.json"):
    bench = load(name)
    if bench:
        rows = ", ".join(f"{r['style']}@{r['batch_size']} {r['status']}" for r in bench["results"] if r["status"] != "ok")
        if any(r["status"] in ("failed", "error") for r in bench["results"]):
            failed.append(name)
        print(f"\n{name}: {sum(r['status'] == 'ok' for r in bench['results'])}/{len(bench['results'])} rows ok"
              + (f"; not ok: {rows}" if rows else ""))
        for t in bench.get("targets") or []:
            print(f"  target {t['target']:<22}{t['value'] if t['value'] is not None else '-'!s:>12} "
                  f"threshold {t['threshold']}: {t['met']}")

dp = load("data-parallel.json")
if dp:
    print(f"\ndata-parallel check, {dp['world_size']} {dp['device']} replica(s): {'PASS' if dp['passed'] else 'FAIL'}")
    for r in dp["rows"]:
        gaps = ", ".join(f"{k} {v:.2e}" for k, v in r["gaps"].items())
        print(f"  {r['check']:<44}{gaps}")
    if not dp["passed"]:
        failed.append("data-parallel")

if failed:
    print(f"\nGPU CHECK FAILED: {', '.join(dict.fromkeys(failed))}")
    sys.exit(1)
print("\nGPU CHECK PASSED")
EOF
exit "${PIPESTATUS[0]}"
}
