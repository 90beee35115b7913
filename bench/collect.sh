#!/usr/bin/env bash
# Writes docs/BENCHMARKS.md: the machine, then every area's figures from
# docs/bench/*.md (each written by that area's benchmark, with its command).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/BENCHMARKS.md
cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)
{
  echo "# Benchmarks"
  echo
  echo "Every figure is a ratio to a baseline measured in the same run (\`dd\`, \`git\`, the docker CLI,"
  echo "\`cue vet\`, a bare TLS server...), because this machine is shared and noisy. Each row names the"
  echo "command that produced it. \`make bench\` runs every area (\`bench/all.sh\`: Go benchmarks \`-count 6\`"
  echo "summarised by benchstat, the 1 GiB install, the 10,000-device hub load, 500 MB bundles, release sizes)"
  echo "and rewrites this file; \`make bench QUICK=1\` is a short run. In each area, the figures and notes its"
  echo "authors wrote come first, then the table of the latest \`make bench\` run."
  echo
  echo "Machine: ${cpu:-unknown CPU}, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr), $(go version | cut -d' ' -f3); load average when collected: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Collected: $(date -u +%Y-%m-%d)."
  for f in docs/bench/*.md; do
    echo
    # Demote each area's headings by one level.
    sed 's/^#/##/' "$f"
  done
} > "$out"
echo "wrote $out"
