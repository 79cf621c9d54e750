#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace (dsf-fhir: resource, nesting, search, bundle,
# websocket; dsf-bpmn: parse) for SECONDS each (default 600), JOBS at a time (default 1), from
# the seed corpora in the repository. Needs `cargo install cargo-fuzz`; runs on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags). Corpora grow in
# <crate>/fuzz/corpus (not committed); crashes land in <crate>/fuzz/artifacts.
#
#   scripts/fuzz.sh [SECONDS] [JOBS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
jobs=${2:-1}
shift $(( $# > 2 ? 2 : $# ))
export RUSTC_BOOTSTRAP=1

all_targets=(dsf-fhir:resource dsf-fhir:nesting dsf-fhir:search dsf-fhir:bundle dsf-fhir:websocket dsf-bpmn:parse)
targets=("${all_targets[@]}")
if [ $# -gt 0 ]; then
    targets=()
    for wanted in "$@"; do
        for t in "${all_targets[@]}"; do [ "${t#*:}" = "$wanted" ] && targets+=("$t"); done
    done
fi

for crate in dsf-fhir dsf-bpmn; do
    (cd "$crate" && cargo fuzz build -O) >/dev/null
done

run() {
    local crate=${1%%:*} target=${1#*:}
    mkdir -p "$crate/fuzz/corpus/$target"
    (cd "$crate" && cargo fuzz run -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1) \
        >"target/fuzz-$target.log" 2>&1 && status=clean || status=FAILED
    echo "$target: $status after $(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$target.log" | grep -o '[0-9]*$' || echo '?') runs (log: target/fuzz-$target.log)"
    [ "$status" = clean ]
}

mkdir -p target
failed=0
running=0
for t in "${targets[@]}"; do
    run "$t" & running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit "$failed"
