#!/usr/bin/env bash
# Submit the T3S pipeline as Slurm jobs chained with afterok dependencies, all in one run directory:
#
#   sft (train.sbatch) -> bottleneck -> profile -> masks -> T3S retraining (+ baselines) -> export -> report
#                                    \-> RRT (pipeline.rrt=true) -----------------------------------/
#
# The report job runs `t3s pipeline CONFIG` once every stage is done: it finds each stage finished,
# samples the accuracy curves (pipeline.curves=true: curves.json, accuracy_curves.png, results.md) and
# writes pipeline.json and report.html, the outputs of a local `t3s pipeline`.
#
#   slurm/submit_pipeline.sh [--dry-run] CONFIG [key=value ...]
#
# The same layout as `t3s pipeline CONFIG` (docs/pipeline.md): ROOT = run_dir, ROOT/config.yaml (the
# resolved config, written now), ROOT/sft, ROOT/t3s, ROOT/<baseline>, ROOT/t3s-hf (the exported T3S
# student), and the job logs in ROOT/logs/<job name>-<job id>.out.
#
# Run it from the directory the jobs should work in (relative paths in the config are relative to it),
# on a host where T3S_PYTHON (default python3) imports t3s_nemo: it resolves the config here.
# Resources are sbatch options, per stage (split on whitespace) and for every job:
#   T3S_SBATCH_ARGS             every job, e.g. "--partition=batch --account=me"
#   T3S_TRAIN_SBATCH_ARGS       sft and retraining, e.g. "--nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --time=04:00:00"
#   T3S_BOTTLENECK_SBATCH_ARGS  sampling, per array task: generation.tp GPUs, e.g. "--gpus=8 --mem=200G
#                               --time=02:00:00" for configs/qwen3_32b (tp 8; each snapshot is exported on the
#                               host first, ~100 GB for 32B), "--gpus=1 ..." for an 8B student
#   T3S_BOTTLENECK_TASKS        array tasks sampling the snapshots side by side (default: one per
#                               evaluated snapshot, at most 8; 1 = a single job); a one-process job after
#                               the array picks theta_b
#   T3S_PROFILE_SBATCH_ARGS     e.g. "--nodes=1 --ntasks-per-node=8 --gpus-per-node=8"
#   T3S_ONE_SBATCH_ARGS         masks, RRT, export, report without curves (one process each; CPU is enough, but host memory is not
#                               small: a 32B RRT holds about 262 GB in fp32, an export about 100 GB;
#                               e.g. "--mem=320G")
# sbatch also reads SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ... The jobs inherit this
# environment (T3S_CONTAINER, T3S_CONTAINER_MOUNTS, T3S_PYTHON, T3S_SRUN_ARGS; see slurm/train.sbatch).
# --dry-run prints the sbatch commands instead of submitting them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
if [ "$#" -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: slurm/submit_pipeline.sh [--dry-run] CONFIG [key=value ...]" >&2
  exit 2
fi
PY=${T3S_PYTHON:-python3}

# Resolve the config as `t3s pipeline` does; print the values the job chain needs, one per line.
read -r -d '' RESOLVE <<'PY' || true
import sys
from pathlib import Path
from t3s_nemo.config import load_config, resolve_path, save_config
from t3s_nemo.errors import T3SError
from t3s_nemo.trajectory.bottleneck import select_snapshots
from t3s_nemo.trajectory.pipeline import MASK_CHANNEL
write = sys.argv[1] == "write"
try:
    cfg = load_config(sys.argv[2], sys.argv[3:])
    if not cfg.run_dir:
        raise T3SError("config key 'run_dir' is required")
    if cfg.model.objective != "ar":
        raise T3SError(f"config key 'model.objective': {cfg.model.objective}; the pipeline runs the AR recipe "
                       "(its profile is causal log p): for a dLLM student see docs/dllm.md")
    if cfg.pipeline.online:
        raise T3SError("config key 'pipeline.online': this submitter chains the offline stages as jobs; online T3S "
                       "is one driver that restarts training itself: run `t3s pipeline CONFIG pipeline.online=true "
                       "--nproc-per-node N` inside one single-node allocation (docs/online.md)")
    rules = [cfg.pipeline.mask_rule] + [b for b in cfg.pipeline.baselines if b != cfg.pipeline.mask_rule]
    for rule in rules:
        if rule not in MASK_CHANNEL:
            raise T3SError(f"mask rule '{rule}': expected one of {', '.join(MASK_CHANNEL)}")
    sft_steps, interval = cfg.pipeline.sft_steps or cfg.train.steps, cfg.checkpoint.snapshot_interval or 1
    b = cfg.bottleneck
    evaluated = len(select_snapshots([(s, None) for s in range(0, sft_steps + 1, interval)], b.every, b.start, b.end))
except T3SError as e:
    sys.exit(f"error: {e}")
root = Path(cfg.run_dir)
if write:
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
sft = root / "sft"
data = resolve_path(cfg.data.path) if cfg.data.path else str(sft / "data")
# the retraining runs snapshot as `t3s pipeline` has them: for the curves, at least every step
retrain_snapshots = cfg.checkpoint.snapshot_interval or int(cfg.pipeline.curves)
print(root, data, sft_steps, interval, retrain_snapshots, cfg.train.steps, int(cfg.pipeline.rrt), evaluated,
      cfg.train.seed, int(cfg.pipeline.curves), cfg.profile.selector_base, cfg.profile.selector_bottleneck, sep="\n")
for i, rule in enumerate(rules):
    print(rule, "t3s" if i == 0 else rule, MASK_CHANNEL[rule])
PY
mode=write
if [ "$dry_run" -eq 1 ]; then mode=dry-run; fi
resolved=$("$PY" -c "$RESOLVE" "$mode" "$@") || {
  echo "submit_pipeline: could not resolve the config with $PY (it must import t3s_nemo; set T3S_PYTHON)" >&2
  exit 1
}
mapfile -t v <<<"$resolved"
root=${v[0]} data=${v[1]} sft_steps=${v[2]} sft_snapshots=${v[3]} snapshots=${v[4]} steps=${v[5]} rrt=${v[6]}
evaluated=${v[7]} seed=${v[8]} curves=${v[9]}
# the profile's selectors as this config names them (the trajectory run's config.yaml keeps those it
# started with, which a resubmission with other selectors must not use)
selectors=()
if [ -n "${v[10]}" ]; then selectors+=("profile.selector_base=${v[10]}"); fi
if [ -n "${v[11]}" ]; then selectors+=("profile.selector_bottleneck=${v[11]}"); fi
rules=("${v[@]:12}")
tasks=${T3S_BOTTLENECK_TASKS:-$((evaluated < 8 ? evaluated : 8))}
if ! [[ "$tasks" =~ ^[1-9][0-9]*$ ]]; then
  echo "submit_pipeline: T3S_BOTTLENECK_TASKS=$tasks: expected a positive integer" >&2
  exit 2
fi
config=$root/config.yaml
logs=$root/logs
if [ "$dry_run" -eq 0 ]; then mkdir -p "$logs"; fi

split() {  # split NAME VALUE: word-split VALUE (no globbing, no evaluation) into the array NAME
  local -n out=$1
  out=()
  if [ -n "$2" ]; then read -r -a out <<<"$2"; fi
}
split all_args "${T3S_SBATCH_ARGS:-}"
split train_args "${T3S_TRAIN_SBATCH_ARGS:-}"
split bottleneck_args "${T3S_BOTTLENECK_SBATCH_ARGS:-}"
split profile_args "${T3S_PROFILE_SBATCH_ARGS:-}"
split one_args "${T3S_ONE_SBATCH_ARGS:-}"

n=0
submit() {  # submit NAME AFTER [sbatch options] SCRIPT [args]: sets $job to the new job id
  local name=$1 after=$2
  local log="%x-%j.out" shown="t3s-$name-JOB.out"
  shift 2
  if [[ "${1:-}" == --array=* ]]; then log="%x-%A_%a.out" shown="t3s-$name-JOB_<task>.out"; fi
  local cmd=(sbatch --parsable --job-name="t3s-$name" --output="$logs/$log" --open-mode=append "${all_args[@]}")
  if [ -n "$after" ]; then cmd+=(--dependency="afterok:$after" --kill-on-invalid-dep=yes); fi
  cmd+=("$@")
  if [ "$dry_run" -eq 1 ]; then
    n=$((n + 1))
    job="JOB$n"
    printf '%s:' "$job"
    printf ' %q' "${cmd[@]}"
    printf '\n'
  else
    job=$("${cmd[@]}")
    job=${job%%;*}  # --parsable prints "id" or "id;cluster"
    printf '%-22s job %-10s log %s\n' "t3s-$name" "$job" "$logs/${shown/JOB/$job}"
  fi
  echo "$name $job" >>"$jobs_file"
}
jobs_file=$root/slurm_jobs.txt
if [ "$dry_run" -eq 1 ]; then jobs_file=/dev/null; fi

submit sft "" "${train_args[@]}" "$here/train.sbatch" --mode sft "$config" "run_dir=$root/sft" \
  "train.steps=$sft_steps" checkpoint.snapshot_step0=true "checkpoint.snapshot_interval=$sft_snapshots"
sft_job=$job
if [ "$tasks" -gt 1 ]; then  # sample the snapshots side by side, then pick theta_b in one small job
  submit bottleneck-sample "$sft_job" --array="0-$((tasks - 1))" "${bottleneck_args[@]}" "$here/bottleneck.sbatch" "$root/sft"
  submit bottleneck "$job" "${one_args[@]}" "$here/bottleneck.sbatch" "$root/sft"
else
  submit bottleneck "$sft_job" "${bottleneck_args[@]}" "$here/bottleneck.sbatch" "$root/sft"
fi
bottleneck_job=$job
submit profile "$bottleneck_job" "${profile_args[@]}" "$here/profile.sbatch" "$root/sft" "${selectors[@]}"
mask_job=$job
# the masks write into the one dataset: one after the other (seeded with train.seed, as `t3s pipeline` does)
for entry in "${rules[@]}"; do
  read -r rule name channel <<<"$entry"
  submit "mask-$rule" "$mask_job" "${one_args[@]}" "$here/t3s.sbatch" mask "$root/sft" --rule "$rule" --name "$channel" \
    --seed "$seed"
  mask_job=$job
done
t3s_job="" done_jobs=""
for entry in "${rules[@]}"; do
  read -r rule name channel <<<"$entry"
  submit "$name" "$mask_job" "${train_args[@]}" "$here/train.sbatch" --mode train "$config" "run_dir=$root/$name" \
    "data.path=$data" "model.init=$root/sft/snapshots/step_0" "mask.channel=$channel" \
    checkpoint.snapshot_step0=false "checkpoint.snapshot_interval=$snapshots"
  if [ -z "$t3s_job" ]; then t3s_job=$job; fi
  done_jobs+=":$job"
done
submit export "$t3s_job" "${one_args[@]}" "$here/export.sbatch" "$root/t3s/checkpoints/iter_$steps" \
  --out "$root/t3s-hf" --overwrite
done_jobs+=":$job"
if [ "$rrt" = 1 ]; then
  submit rrt "$bottleneck_job" "${one_args[@]}" "$here/t3s.sbatch" rrt "$root/sft" --overwrite
  done_jobs+=":$job"
fi
# sampling the curves takes the bottleneck's resources; without them the report is one small process
report_args=("${one_args[@]}")
if [ "$curves" = 1 ]; then report_args=("${bottleneck_args[@]}"); fi
submit report "${done_jobs#:}" "${report_args[@]}" "$here/t3s.sbatch" pipeline "$config"
if [ "$dry_run" -eq 0 ]; then
  echo "submitted to $root (job ids in $jobs_file); follow with: squeue -u \"\$USER\"; tail -f $logs/*.out"
fi
