#!/usr/bin/env bash
# The main job on the shipped sample logs, as a user would run it:
#   1. train a model on the labelled sample (sample_logs/train.jsonl.gz),
#   2. diagnose the baseline night,
#   3. diagnose the nightly file against that baseline, with CI gates.
# Everything is written into sample_out/ (git ignores it), or the directory given as
# $1: `bash scripts/sample_run.sh reports` regenerates the committed example reports.
# The sample nightly file carries a simulated regression, so its gates are
# expected to FAIL (exit 1): that is what a CI job would report.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-sample_out}"
mkdir -p "$out"

fpi train sample_logs/train.jsonl.gz --out "$out/model" --seed 0 --threads 1

fpi diagnose sample_logs/baseline_night.jsonl.gz --model "$out/model" --out "$out/baseline"

status=0
fpi diagnose sample_logs/nightly.jsonl.gz --model "$out/model" --out "$out/nightly" \
    --baseline "$out/baseline/summary.json" --gates sample_logs/gates.toml \
    --junit "$out/nightly/gates.xml" || status=$?

case "$status" in
  0) echo "sample_run: every gate passed; reports in $out/" >&2 ;;
  1) echo "sample_run: a gate failed on the nightly sample, as expected for its simulated regression; reports in $out/" >&2 ;;
  *) echo "sample_run: fpi diagnose failed with exit code $status" >&2; exit "$status" ;;
esac
