#!/usr/bin/env bash
# Interleaved A/B of the attack suite (bench/RESULTS.md, "The per-caller query budget"): the
# test run ROUNDS times per arm, alternating the query budget on (the default) and off (a budget
# no caller reaches), on both backends. Prints the test's summary line per run; a run whose victim
# keeps less than MAOSIC_ATTACK_SUITE_MIN_RATIO (default 0.8, issue 15's goal) of its quiet loop
# rate panics (the test alone only holds a 0.5 starvation floor).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/maosic-target}"
export MAOSIC_TEST_POSTGRES_URL="${MAOSIC_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build -q --bins
for _ in $(seq 1 "${ROUNDS:-3}"); do
    for arm in on off; do
        extra=()
        if [ "$arm" = off ]; then
            extra=(MAOSIC_GRAPHQL__QUERY_BYTES_PER_SECOND=4000000000 MAOSIC_GRAPHQL__QUERY_BURST_BYTES=4000000000)
        fi
        env MAOSIC_ATTACK_SUITE_MIN_RATIO="${MAOSIC_ATTACK_SUITE_MIN_RATIO:-0.8}" "${extra[@]}" cargo test -q -p maosic-e2e --test attack_suite -- --nocapture 2>&1 \
            | grep -E "attack suite|panicked" | sed "s/^/budget $arm /"
    done
done
