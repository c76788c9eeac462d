#!/usr/bin/env bash
# Instructions per fit of two revisions of maosic-analysis, counted by callgrind: the ratio a
# speed change buys, free of the machine's noise (on a shared VM the thread CPU time of one
# binary varies by tens of percent between runs; an instruction count is deterministic). It does
# not see cache or pipeline effects, so report it beside the `fit_hard` bench's times.
#
#   bench/fit_instructions.sh [BASE_REV] [NEW_REV] [FAMILY] [COUNT] [SEED_BASE]
#
# Defaults: HEAD~1, the working tree, issue-3-gaussians, 200 spectra, seed base 0 (FAMILY:
# issue-3-gaussians | hard-1-6-peaks). NEW_REV `.` is the working tree. Each source tree is built
# into its own target directory under $MAOSIC_FIT_INSTR_DIR (default /var/tmp/maosic-fit-instr):
# two checkouts building into one target directory share the uplifted example binary, and
# cargo does not copy a binary it thinks is fresh. `examples/fit_loop.rs` is copied into a
# revision that predates it (it uses only the public API). The spectra's generation is counted
# alone and subtracted.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

base_rev=${1:-HEAD~1}
new_rev=${2:-.}
family=${3:-issue-3-gaussians}
count=${4:-200}
seed_base=${5:-0}
dir=${MAOSIC_FIT_INSTR_DIR:-/var/tmp/maosic-fit-instr}
command -v valgrind >/dev/null || { echo "fit_instructions: valgrind is not installed" >&2; exit 1; }
mkdir -p "$dir"
example=server/analysis/examples/fit_loop.rs

# checkout REV → prints the source directory of REV (the working tree for `.`)
checkout() {
    if [ "$1" = . ]; then
        pwd
        return
    fi
    local sha src
    sha=$(git rev-parse --verify "$1^{commit}")
    src="$dir/src-$sha"
    if [ ! -d "$src" ]; then
        mkdir -p "$src.tmp"
        git archive "$sha" | tar -x -C "$src.tmp"
        mv "$src.tmp" "$src"
    fi
    if [ ! -f "$src/$example" ]; then
        mkdir -p "$(dirname "$src/$example")"
        cp "$example" "$src/$example"
    fi
    echo "$src"
}

# instructions SRC NAME → prints "generation fits" instruction counts
instructions() {
    local src=$1 name=$2 bin gen all
    (cd "$src" && CARGO_TARGET_DIR="$dir/target-$name" cargo build --quiet --release \
        -p maosic-analysis --example fit_loop)
    bin="$dir/target-$name/release/examples/fit_loop"
    count_of() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$family" "$count" \
            "$seed_base" "$1" 2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
    }
    gen=$(count_of 0)
    all=$(count_of 1)
    echo "$gen $all"
}

base_src=$(checkout "$base_rev")
new_src=$(checkout "$new_rev")
# One target directory per source tree, never shared (see above).
target_name() { if [ "$1" = "$(pwd)" ]; then echo worktree; else basename "$1"; fi; }
base_counts=$(instructions "$base_src" "$(target_name "$base_src")")
new_counts=$(instructions "$new_src" "$(target_name "$new_src")")
read -r base_gen base_all <<<"$base_counts"
read -r new_gen new_all <<<"$new_counts"
awk -v bg="$base_gen" -v ba="$base_all" -v ng="$new_gen" -v na="$new_all" -v n="$count" \
    -v fam="$family" -v s="$seed_base" -v br="$base_rev" -v nr="$new_rev" 'BEGIN {
    b = (ba - bg) / n; w = (na - ng) / n
    printf "| family | spectra | %s: instructions per fit | %s | ratio |\n", br, nr
    printf "|---|---|---:|---:|---:|\n"
    printf "| %s | seeds %d..%d | %.2f M | %.2f M | %.3fx |\n", fam, s, s + n, b / 1e6, w / 1e6, b / w
}'
