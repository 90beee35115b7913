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
  echo "command that produced it. \`make bench\` re-runs the quick ones and rewrites this file;"
  echo "the long ones (1 GiB install, 10,000-device hub load, 500 MB bundles) are run by their own commands."
  echo
  echo "Machine: ${cpu:-unknown CPU}, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr), $(go version | cut -d' ' -f3)."
  echo "Collected: $(date -u +%Y-%m-%d)."
  for f in docs/bench/*.md; do
    echo
    # Demote each area's headings by one level.
    sed 's/^#/##/' "$f"
  done
} > "$out"
echo "wrote $out"
