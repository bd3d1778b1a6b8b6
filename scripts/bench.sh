#!/usr/bin/env bash
# Benchmarks the stages built so far at the sizes given (default: 1M and 10M events) and prints
# a Markdown table for BENCHMARKS.md. Needs /usr/bin/time (Debian package `time`) for peak RSS.
#   ./scripts/bench.sh            # 1M and 10M
#   ./scripts/bench.sh 2000000    # one size
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p vigil >&2
bin=$(pwd)/target/release/vigil
work="${BENCH_DIR:-$(mktemp -d)}"
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(1000000 10000000)
end="2026-02-15T00:00:00Z"
echo "| events | stage | seconds | events/s | peak RSS (MB) |"
echo "|---|---|---|---|---|"
for n in "${sizes[@]}"; do
  d="$work/$n"; rm -rf "$d"; mkdir -p "$d"
  /usr/bin/time -f '%e %M' -o "$d/gen.time" "$bin" generate --events "$n" --seed 1 --end "$end" --out "$d/events.csv" 2>/dev/null
  read -r gs gm < "$d/gen.time"
  echo "| $n | generate (CSV) | $gs | $(awk -v n="$n" -v s="$gs" 'BEGIN{printf "%.0f", n/s}') | $((gm/1024)) |"
  /usr/bin/time -f '%e %M' -o "$d/ingest.time" "$bin" ingest "$d/events.csv" --data "$d/ingest-only" 2>/dev/null
  read -r is im < "$d/ingest.time"
  echo "| $n | ingest (CSV -> Parquet) | $is | $(awk -v n="$n" -v s="$is" 'BEGIN{printf "%.0f", n/s}') | $((im/1024)) |"
  /usr/bin/time -f '%e %M' -o "$d/run.time" "$bin" run --data "$d/ingest-only" --out "$d/out" 2>/dev/null
  read -r rs rm_ < "$d/run.time"
  python3 - "$d/out/run.json" "$n" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); n = int(sys.argv[2])
for stage, s in m["stage_seconds"]:
    if stage == "ingest":
        continue
    print(f"| {n} | {stage} | {s:.2f} | {n/s:.0f} | |")
PY
  echo "| $n | run without ingest (wall) | $rs | $(awk -v n="$n" -v s="$rs" 'BEGIN{printf "%.0f", n/s}') | $((rm_/1024)) |"
  # The one command a user runs: ingest included, into a fresh data directory.
  /usr/bin/time -f '%e %M' -o "$d/full.time" "$bin" run --input "$d/events.csv" --out "$d/full" 2>/dev/null
  read -r fs fm < "$d/full.time"
  echo "| $n | run --input (one command, wall) | $fs | $(awk -v n="$n" -v s="$fs" 'BEGIN{printf "%.0f", n/s}') | $((fm/1024)) |"
  whole=$(awk -v g="$gs" -v f="$fs" 'BEGIN{printf "%.2f", g+f}')
  # The notebook's whole run (generation included) at 2M: 171 s (shared/parity/BASELINES.md).
  ratio=""
  [ "$n" = 2000000 ] && ratio=" (notebook 171 s: $(awk -v w="$whole" 'BEGIN{printf "%.1fx", 171/w}'))"
  echo "| $n | whole job: generate + run --input$ratio | $whole | $(awk -v n="$n" -v s="$whole" 'BEGIN{printf "%.0f", n/s}') | |"
  rm -rf "$d"
done
