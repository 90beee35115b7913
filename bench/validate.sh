#!/usr/bin/env bash
# Benchmark: `shoal validate` on generated fleets of 1,000 and 10,000 devices,
# against `cue vet` (cuelang.org/go/cmd/cue at the module's version) checking
# the same files against the same schema: the floor for one evaluation of the
# tree. Prints markdown table rows: what, ours, baseline, ratio, command.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cuever=$(go list -m -f '{{.Version}}' cuelang.org/go)
GOBIN="$work/bin" go install "cuelang.org/go/cmd/cue@$cuever"
go build -o "$work/bin/shoal" ./cmd/shoal
go build -o "$work/bin/fleetgen" ./bench/fleetgen
cp spec/schema.cue "$work/schema.cue"

measure() { # prints "wall_seconds max_rss_kb"
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  cat "$work/time"
}
cuevet() {
  local dir=$1
  "$work/bin/cue" vet -d '#DeviceFile' "$work/schema.cue" "$dir"/devices/*.yaml &&
    "$work/bin/cue" vet -d '#GroupFile' "$work/schema.cue" "$dir"/groups/*.yaml &&
    "$work/bin/cue" vet -d '#AppFile' "$work/schema.cue" "$dir"/apps/*.yaml &&
    "$work/bin/cue" vet -d '#ReleaseFile' "$work/schema.cue" "$dir"/releases/*.yaml
}
export -f cuevet
export work

for n in 1000 10000; do
  dir="$work/fleet$n"
  "$work/bin/fleetgen" -devices "$n" -out "$dir"
  read -r ours_s ours_kb < <(measure "$work/bin/shoal" validate "$dir")
  read -r base_s base_kb < <(measure bash -c "cuevet $dir")
  ratio=$(awk -v a="$ours_s" -v b="$base_s" 'BEGIN{printf "%.2f", a/b}')
  printf '| shoal validate, %d devices: wall | %.2f s | cue vet %.2f s | %s× | bench/validate.sh |\n' "$n" "$ours_s" "$base_s" "$ratio"
  printf '| shoal validate, %d devices: peak RSS | %d MB | cue vet %d MB | %s× | bench/validate.sh |\n' "$n" $((ours_kb/1024)) $((base_kb/1024)) \
    "$(awk -v a="$ours_kb" -v b="$base_kb" 'BEGIN{printf "%.2f", a/b}')"
done
