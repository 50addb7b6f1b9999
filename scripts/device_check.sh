#!/usr/bin/env bash
# One prepared pass over ocrl's CUDA paths, sized for a few minutes of a lent GPU (docs/results/gpu.md holds
# a run's findings). Phase A, in parallel (correctness, not timed): every algorithm's CLI with --device cuda
# at tiny sizes (--compile, --precision fp32 and the trajectory level too), the randperm-in-CUDA-graph probe, the
# CUDA-parametrised tests and the test suite (device 'auto' = CUDA there). Phase B, one at a time (timings):
# python -m scripts.bench's TD3+BC updates (eager vs torch.compile), diffusion (fp32 vs bf16+TF32, + the CUDA-graph
# sampler) and EXPO per environment step (eager vs --compile), each followed by torch.compile's counters.
# Every step has a time limit; later steps get what is left of BUDGET seconds. PHASES=B runs phase B alone.
#
#   OUT=/tmp/out bash scripts/device_check.sh                     # on the GPU machine; ocrl importable
#   DRY=1 OUT=/tmp/out PY=.venv/bin/python bash scripts/device_check.sh   # CPU dry run: tiny, sequential
#
# Writes $OUT/report.md (also printed at the end), $OUT/log.txt and $OUT/logs.tar.gz (every step's log).
#
# On the lent GPU machine (python3 3.12 with torch; no gymnasium, mujoco, minari or tyro, no network): copy
# the committed tree and the wheels into an ignored folder of the checkout that travels, e.g.
#   echo /.devcheck/ >> .git/info/exclude; git archive HEAD | tar -x -C .devcheck/src
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     -d .devcheck/whl gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.1 mujoco-core==4.0.1 \
#     minari==0.5.4 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 glfw==2.11.0 pyopengl==3.1.10 \
#     typing-extensions==4.16.0                      # 14 MB; the image has the rest (typer, rich, h5py...)
# and run, carrying .devcheck, with a limit of BUDGET + ~40 s:
#   D=$PWD/.devcheck; python3 -m pip install -q --no-deps --no-index --target /tmp/site $D/whl/*.whl;
#   mkdir -p /tmp/pkg; ln -sfn $D/src /tmp/pkg/ocrl; cd $D/src; PYTHONPATH=/tmp/pkg:/tmp/site bash scripts/device_check.sh
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:?set OUT to a folder for the report}
BUDGET=${BUDGET:-420}
DRY=${DRY:-0}
PHASES=${PHASES:-AB}
START=$SECONDS
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
LOGS=$(mktemp -d)
RUNS=$(mktemp -d)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if [ "$DRY" = 1 ]; then
  DEV=cpu N=40 LOG=20 PAR=0 SAMPLES=400 SBATCH=200
  export TORCH_COMPILE_DISABLE=1 OMP_NUM_THREADS=1
else
  DEV=cuda N=500 LOG=100 PAR=1 SAMPLES=20000 SBATCH=10000
  export OMP_NUM_THREADS=2
fi

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP CMD...: CMD under a limit of min(CAP, time left - 20) s, output in $LOGS/NAME.log, a row in
# $LOGS/steps.md.
step() {
  local name=$1 cap=$2
  shift 2
  local limit=$(($(left) - 20))
  ((cap < limit)) && limit=$cap
  if ((limit < 10)); then
    echo "| $name | skipped: out of time | 0 |" >>"$LOGS/steps.md"
    echo "== $name: skipped (out of time)"
    return
  fi
  local t0=$SECONDS rc status=ok
  timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then
    status="TIMED OUT at ${limit} s"
  elif ((rc != 0)); then
    status="FAILED (exit $rc)"
  fi
  echo "| $name | $status | $((SECONDS - t0)) |" >>"$LOGS/steps.md"
  echo "== $name: $status ($((SECONDS - t0)) s)"
}

# bg NAME CAP CMD...: `step` in the background in phase A (in the foreground for DRY=1).
PIDS=()
bg() {
  if [ "$PAR" = 1 ]; then
    step "$@" &
    PIDS+=($!)
  else
    step "$@"
  fi
}

echo "# ocrl CUDA check, $(date -u '+%Y-%m-%d %H:%M UTC'), DRY=$DRY" >"$LOGS/head.md"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >>"$LOGS/head.md" 2>&1
fi
echo "| step | status | s |" >"$LOGS/steps.md"
echo "|---|---|---|" >>"$LOGS/steps.md"
step env 60 "$PY" scripts/device_check.py env
cat "$LOGS/env.log" >>"$LOGS/head.md"

# ---- phase A: correctness, in parallel
if [[ $PHASES == *A* ]]; then
A=(--device "$DEV" --no-progress --log-every "$LOG")
EV=(--eval-every "$N" --eval-episodes 2)
H=$((N / 2))
bg td3_bc 130 "$PY" algos/td3_bc.py "${A[@]}" "${EV[@]}" --total-steps "$N" --run-dir "$RUNS/td3_bc"
bg td3_bc_compile 130 "$PY" algos/td3_bc.py "${A[@]}" "${EV[@]}" --total-steps "$N" --compile \
  --run-dir "$RUNS/td3_bc_compile"
bg td3_bc_seeds16_bf16 130 "$PY" algos/td3_bc.py "${A[@]}" "${EV[@]}" --total-steps "$N" --num-seeds 16 \
  --precision bf16 --run-dir "$RUNS/td3_bc_seeds16_bf16"
bg iql 130 "$PY" algos/iql.py "${A[@]}" "${EV[@]}" --total-steps "$N" --run-dir "$RUNS/iql"
bg prdc 130 "$PY" algos/prdc.py "${A[@]}" "${EV[@]}" --total-steps "$N" --run-dir "$RUNS/prdc"
bg a2pr 130 "$PY" algos/a2pr.py "${A[@]}" "${EV[@]}" --total-steps "$N" --run-dir "$RUNS/a2pr"
bg sac 130 "$PY" algos/sac.py "${A[@]}" "${EV[@]}" --total-steps "$N" --learning-starts "$H" \
  --run-dir "$RUNS/sac"
bg ggd_td 130 "$PY" algos/ggd_td.py "${A[@]}" "${EV[@]}" --total-steps "$N" --learning-starts "$H" \
  --run-dir "$RUNS/ggd_td"
bg expo 130 "$PY" algos/expo.py "${A[@]}" --eval-every "$H" --eval-episodes 2 --total-steps "$H" \
  --learning-starts $((N / 4)) --utd-ratio 5 --run-dir "$RUNS/expo"
bg expo_compile 130 "$PY" algos/expo.py "${A[@]}" --eval-every "$H" --eval-episodes 2 --total-steps "$H" \
  --learning-starts $((N / 4)) --utd-ratio 5 --compile --run-dir "$RUNS/expo_compile"
bg rlpd 130 "$PY" algos/expo.py "${A[@]}" --eval-every "$H" --eval-episodes 2 --total-steps "$H" \
  --learning-starts $((N / 4)) --utd-ratio 5 --policy gaussian --run-dir "$RUNS/rlpd"
D=(--num-samples "$SAMPLES" --sample-batch-size "$SBATCH" --sample-steps 32 --quality-samples 1000)
bg diffusion_bf16 130 "$PY" algos/diffusion.py "${A[@]}" --preset cpu-small --total-steps "$N" "${D[@]}" \
  --run-dir "$RUNS/diffusion_bf16"
bg diffusion_fp32_compile 130 "$PY" algos/diffusion.py "${A[@]}" --preset cpu-small --total-steps "$N" \
  "${D[@]}" --precision fp32 --compile --run-dir "$RUNS/diffusion_fp32_compile"
bg diffusion_trajectory 130 "$PY" algos/diffusion.py "${A[@]}" --preset pgd-unguided --unet-features 64 \
  --unet-blocks 2 --trajectory-length 16 --total-steps "$N" --num-samples 4000 --sample-batch-size 256 \
  --sample-steps 16 --quality-samples 1000 --run-dir "$RUNS/diffusion_trajectory"
P=(--preset cpu-small --diffusion-steps "$N" --guidance-coef 0.1 --normalize-action-guidance
  --total-steps "$N" --synth-dataset-lifetime "$H" --num-synth-trajectories 256)
bg pgd_td3_bc 130 "$PY" algos/pgd.py "${A[@]}" "${EV[@]}" "${P[@]}" --agent td3_bc --run-dir "$RUNS/pgd_td3_bc"
bg pgd_iql 130 "$PY" algos/pgd.py "${A[@]}" "${EV[@]}" "${P[@]}" --agent iql --run-dir "$RUNS/pgd_iql"
bg hdpo 130 "$PY" algos/hdpo.py --device "$DEV" --no-progress --max-steps 40 --n-train 8192 --n-dev 8192 \
  --n-test 4096 --test-periods 400 --test-ignore 200 --run-dir "$RUNS/hdpo"
if [ "$DRY" = 1 ]; then
  bg graphs 130 "$PY" scripts/device_check.py graphs cpu
  bg tests_prdc 130 "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/test_prdc.py
  bg tests 130 "$PY" -m pytest -q -p no:cacheprovider --collect-only -m "not slow" tests
else
  bg graphs 130 env TORCH_LOGS=perf_hints,recompiles,graph_breaks "$PY" scripts/device_check.py graphs cuda
  bg tests_prdc 130 "$PY" -m pytest -v -p no:cacheprovider tests/test_prdc.py
  # The whole suite except what needs packages the GPU image lacks (ray, rliable) or is no CUDA path.
  bg tests 130 "$PY" -m pytest -v -p no:cacheprovider -n 6 -m "not slow" --timeout 120 -rfE \
    --ignore=tests/test_sweep.py --ignore=tests/test_report.py --ignore=tests/test_robotics_tasks.py tests
fi
# Not a bare `wait`: that would also wait for the `tee` of the log, which ends only with the script.
for pid in "${PIDS[@]}"; do wait "$pid"; done
fi

# ---- phase B: timings, one at a time
if [[ $PHASES == *B* ]]; then
B=(--device "$DEV")
if [ "$DRY" = 1 ]; then
  UPD=(--updates 20 --rounds 1 --no-compile)
  DIF=(--train-steps 5 --rounds 1 --sample-batch 100 --sample-steps 4
    --sample-rounds 1)
  EXP=(--utd 1 --steps 1 --rounds 1)
  SEEDS=(--seed-updates 32 --rounds 1 --num-seeds 1 16)
else
  UPD=(--updates 300 --rounds 5)
  DIF=(--train-steps 50 --rounds 3 --sample-batch 10000 --sample-steps 32
    --sample-rounds 3)
  EXP=(--utd 20 --steps 2 --rounds 3)
  SEEDS=(--seed-updates 1600 --rounds 3 --num-seeds 1 4 16 64)
fi
export TORCH_LOGS=perf_hints,recompiles,graph_breaks
step bench_expo 110 "$PY" scripts/device_check.py bench -- expo "${B[@]}" "${EXP[@]}"
step bench_updates 80 "$PY" scripts/device_check.py bench -- updates "${B[@]}" "${UPD[@]}"
step bench_seeds 80 "$PY" scripts/device_check.py bench -- seeds "${B[@]}" "${SEEDS[@]}"
step bench_diffusion 90 "$PY" scripts/device_check.py bench -- diffusion "${B[@]}" "${DIF[@]}"
step bench_diffusion_synther_size 80 "$PY" scripts/device_check.py bench -- diffusion "${B[@]}" \
  --no-compile --width 2048 --depth 6 "${DIF[@]}"
unset TORCH_LOGS
fi

# ---- the report
R=$OUT/report.md
{
  cat "$LOGS/head.md"
  echo
  echo "## Steps ($((SECONDS - START)) s in all)"
  cat "$LOGS/steps.md"
  echo
  echo "## Algorithm runs (--device $DEV, $N updates or steps)"
  runs=()
  for d in "$RUNS"/*/; do runs+=("$(basename "$d")=$d"); done
  "$PY" scripts/device_check.py summary "${runs[@]}" 2>&1
  echo
  echo "## Tests"
  for t in tests_prdc tests; do
    [ -f "$LOGS/$t.log" ] || continue
    echo "### $t"
    echo '```'
    grep -E "^(FAILED|ERROR) |passed|failed|error" "$LOGS/$t.log" | grep -v "^tests/.*PASSED" | tail -40
    echo '```'
  done
  echo
  echo "## CUDA graphs (randperm subset probe)"
  [ -f "$LOGS/graphs.log" ] && grep -E "^- |counters" "$LOGS/graphs.log"
  echo
  echo "## Timings"
  for b in bench_expo bench_updates bench_seeds bench_diffusion bench_diffusion_synther_size; do
    [ -f "$LOGS/$b.log" ] || continue
    echo "### $b"
    grep -v -E '^[VIWDE][0-9]{4} |^\s*$' "$LOGS/$b.log" | grep -v "^\[" | tail -30
    skips=$(grep -c "skipping cudagraphs" "$LOGS/$b.log")
    echo "'skipping cudagraphs' messages: $skips"
    grep -o "skipping cudagraphs.*" "$LOGS/$b.log" | sort | uniq -c | head -5
    echo
  done
  echo "## Failures (last 25 lines of each failed or timed-out step)"
  while IFS='|' read -r _ name status _; do
    name=$(echo "$name" | xargs)
    case "$status" in *FAILED* | *TIMED*)
      echo "### $name:$status"
      echo '```'
      tail -25 "$LOGS/$name.log"
      echo '```'
      ;;
    esac
  done <"$LOGS/steps.md"
  if command -v nvidia-smi >/dev/null; then
    echo
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,memory.used --format=csv
  fi
} >"$R" 2>&1
for d in "$RUNS"/*/; do
  mkdir -p "$LOGS/runs/$(basename "$d")"
  cp "$d"/*.json "$LOGS/runs/$(basename "$d")/" 2>/dev/null
done
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
echo
cat "$R"
