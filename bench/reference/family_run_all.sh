#!/usr/bin/env bash
# Issue #16: optimizers on generated landscape families, both sides, one class per output line (JSON).
#   bash bench/reference/family_run_all.sh SIDE SET COUNT SEEDS [BUDGET] > out.jsonl
# SIDE: rust (our snobfit b8, snobfit b1, bo b1), sqsnobfit (b8), optuna (b1), skopt (b1).
# SET: tune | test. COUNT landscapes per class (indices 0..COUNT), SEEDS per landscape.
# Needs the venv of optimizer_requirements.txt at $VENV (default /var/tmp/maosic-venv-opt).
set -euo pipefail
SIDE=$1; SET=$2; COUNT=$3; SEEDS=$4; BUDGET=${5:-250}
VENV=${VENV:-/var/tmp/maosic-venv-opt}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/maosic-target-opt}
cargo build --quiet --release -p maosic-optimizer --example optimize_bench --manifest-path "$ROOT/Cargo.toml"
RUST="$CARGO_TARGET_DIR/release/examples/optimize_bench"
DIR=${FAMILY_DIR:-/var/tmp/maosic-family-$SET-$COUNT}
"$RUST" --family all --family-set "$SET" --count "$COUNT" --write-family "$DIR"
PY="$VENV/bin/python -W ignore $HERE/optimizer_reference.py"
echo "# $(date -u +%FT%TZ) side $SIDE set $SET count $COUNT seeds $SEEDS budget $BUDGET"
for C in narrow-broad edge twin rugged flow; do
  case $SIDE in
    rust)
      for spec in "snobfit 8" "snobfit 1" "bo 1"; do
        set -- $spec
        "$RUST" --family "$C" --family-set "$SET" --count "$COUNT" --seeds "$SEEDS" --budget "$BUDGET" --optimizer $1 --batch $2 --json
      done ;;
    sqsnobfit) $PY --landscape-dir "$DIR/$C" --optimizer sqsnobfit --batch 8 --seeds "$SEEDS" --budget "$BUDGET" ;;
    optuna) $PY --landscape-dir "$DIR/$C" --optimizer optuna_tpe --batch 1 --seeds "$SEEDS" --budget "$BUDGET" ;;
    skopt) $PY --landscape-dir "$DIR/$C" --optimizer skopt_gp --batch 1 --seeds "$SEEDS" --budget "$BUDGET" ;;
  esac
done
