#!/usr/bin/env bash
# The long fuzz run of BENCHMARKS.md: every target for SECONDS (default 1800) in turn, from
# its seeds and a corpus kept under fuzz/corpus/ (so that runs add up), one core. Prints per
# target: exit status, executions, corpus size and peak RSS as libFuzzer reports them.
# A crash leaves its input under fuzz/artifacts/<target>/ and stops with libFuzzer's status.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(scan_rewrite tcp_framing call_tracking account_request api_params store_codecs)
fi
cargo +nightly fuzz build --fuzz-dir fuzz
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  log="fuzz/artifacts/$target/long.log"
  status=0
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  echo "$target: exit $status, ${seconds}s, ${execs:-?} executions, corpus $corpus, peak RSS ${rss:-?} MB"
  [ "$status" -eq 0 ] || exit "$status"
done
