#!/usr/bin/env bash
# One run of the optimizer benchmark, both sides (MAOSIC Rust and the Python references), on the
# three embedded landscapes; prints the tables pasted into bench/RESULTS.md (## Optimizer).
#   bash bench/reference/optimizer_run_all.sh [SEEDS] [BUDGET] > /tmp/optimizer_results.txt
# Needs: a venv with bench/reference/optimizer_requirements.txt at $VENV
# (default /var/tmp/maosic-venv-opt) and cargo.
set -euo pipefail
SEEDS=${1:-20}
BUDGET=${2:-250}
VENV=${VENV:-/var/tmp/maosic-venv-opt}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/maosic-target-opt}
cargo build --quiet --release -p maosic-optimizer --example optimize_bench --manifest-path "$ROOT/Cargo.toml"
RUST="$CARGO_TARGET_DIR/release/examples/optimize_bench"
PY="$VENV/bin/python -W ignore $HERE/optimizer_reference.py"
echo "# $(date -u +%FT%TZ) $(nproc) cores; seeds $SEEDS, budget $BUDGET"
echo "## MAOSIC (Rust)"
for L in paper branin hartmann3; do
  for spec in "snobfit 8" "snobfit 1" "bo 1" "bo 4" "random 1" "sobol 1" "grid 1"; do
    set -- $spec
    "$RUST" --landscape $L --optimizer $1 --batch $2 --seeds $SEEDS --budget $BUDGET | tail -n 1
  done
done
echo "## References (Python)"
for L in paper branin hartmann3; do
  for spec in "sqsnobfit 8" "sqsnobfit 1" "skopt_gp 1" "optuna_tpe 1"; do
    set -- $spec
    $PY --landscape $L --optimizer $1 --batch $2 --seeds $SEEDS --budget $BUDGET
  done
done
echo "## Latency: tell + ask(1) at 250 observations, 2 parameters (paper), random history"
for O in snobfit bo; do "$RUST" --landscape paper --optimizer $O --latency --random-history; done
"$RUST" --landscape paper --optimizer bo --latency --random-history --refit-always
for O in snobfit bo; do "$RUST" --landscape paper --optimizer $O --latency; done
for O in sqsnobfit skopt_gp optuna_tpe; do $PY --landscape paper --optimizer $O --latency --random-history; done
