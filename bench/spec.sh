#!/usr/bin/env bash
# The fleet spec's benchmarks: validate on 1,000 and 10,000 devices against
# cue vet, and one device's render time and allocations. Writes docs/bench/spec.md.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go run ./bench/fleetgen -devices 1000 -out "$tmp/fleet1k"
render=$(SHOAL_BENCH_FLEET="$tmp/fleet1k" go test ./spec -run '^$' -bench Render -benchtime 2000x -count 1 | awk '/^BenchmarkRender/{printf "%.2f ms, %.0f KB allocated, %s allocs", $3/1e6, $5/1024, $7}')
rows=$(bash bench/validate.sh)
{
  echo "# spec: validate and render"
  echo
  echo "Fleets from \`bench/fleetgen\`: 25 groups (4 roles enabling 6 apps each, 20 sites with defaults, a canary list), 30 apps,"
  echo "5 releases, one device in ten with its own overrides. Baseline: \`cue vet\` of the same files against the same schema"
  echo "definitions, the floor for one evaluation of the tree. Targets: 10,000 devices in under 10 s and 500 MB; one render under 5 ms and 1 MB."
  echo
  echo "| what | ours | baseline | ratio | command |"
  echo "|---|---|---|---|---|"
  echo "$rows"
  echo "| render one device (1,000-device fleet) | $render | — | — | \`SHOAL_BENCH_FLEET=DIR go test ./spec -run '^\$' -bench Render -benchtime 2000x\` |"
} > docs/bench/spec.md
echo "wrote docs/bench/spec.md"
