#!/usr/bin/env bash
# Runs the CycleGAN training runs of docs/results/learned-engine.md one after another on one
# core (nice 10, one torch thread). Each line of QUEUE is "NAME ARGS..." (extra trainer
# arguments); the file is re-read after every run, so lines can be appended while it runs.
# A run whose weights exist is skipped; one with a checkpoint resumes exactly (--resume).
# Usage: docs/results/learned-engine-queue.sh QUEUE_FILE RUNS_DIR DATA_DIR
set -u
queue=$1 runs=$2 data=$3
py=${PYTHON:-/work/main/.venv/bin/python}
export OMP_NUM_THREADS=1
done_names=" "
while true; do
  line=$(grep -v '^#' "$queue" | grep -v '^\s*$' | while read -r name rest; do
    case "$done_names" in *" $name "*) ;; *) echo "$name $rest"; break;; esac; done)
  [ -z "$line" ] && break
  read -r name rest <<<"$line"
  done_names="$done_names$name "
  out=$runs/$name/weights.safetensors
  [ -f "$out" ] && { echo "$(date -u +%T) skip $name (weights exist)"; continue; }
  resume=""; [ -f "$runs/$name/weights.run/checkpoint.pt" ] && resume="--resume"
  echo "$(date -u +%T) start $name $resume $rest"
  # shellcheck disable=SC2086
  nice -n 10 "$py" -m trainer --scheme cyclegan --abnormal "$data/abnormal" --normal "$data/normal" \
    --out "$out" --device cpu $resume \
    --set data.crop_size=128 --set data.scale_min=0.25 --set data.workers=0 \
    --set enhancer.illumination_scale=4 --set cyclegan.batch=4 --set cyclegan.disc_width=32 \
    --set run.checkpoint_every=50 --set run.preview_every=100 --set run.log_every=10 \
    --set run.progress=false $rest >>"$runs/$name.log" 2>&1
  echo "$(date -u +%T) end $name rc=$?"
done
echo "$(date -u +%T) queue empty"
