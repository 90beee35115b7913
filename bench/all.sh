#!/usr/bin/env bash
# Runs every area's benchmarks and rewrites docs/BENCHMARKS.md. Each area
# writes its table (what, ours, baseline, ratio, command) into the block
# between the "make bench" markers of docs/bench/<area>.md, under the prose
# its authors keep there; bench/collect.sh then joins the areas.
#
# Go benchmarks run -count 6 and are summarised by benchstat (median and its
# 95 % confidence interval); each baseline runs in the same `go test` process
# as ours, right after it, because the machine is shared and noisy.
#
#   bash bench/all.sh                 # everything, full sizes (about an hour on 2 cores)
#   QUICK=1 bash bench/all.sh         # short runs (-count 1, small sizes), minutes
#   AREAS="attest web" bash bench/all.sh
set -uo pipefail
cd "$(dirname "$0")/.."

# benchstat, pinned: a version the module proxy serves.
BENCHSTAT=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
QUICK=${QUICK:-}
COUNT=6
[ -n "$QUICK" ] && COUNT=1
ALL="spec agent reconcile updater attest hub web provision release relay sensor"
AREAS=${AREAS:-$ALL}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# q picks the full or the quick value.
q() { if [ -n "$QUICK" ]; then echo "$2"; else echo "$1"; fi; }

# dur formats seconds (as benchstat prints them) for a person.
dur() {
  awk -v s="$1" 'BEGIN {
    if (s == "") { print "—"; exit }
    if (s >= 1) printf "%.2f s", s; else if (s >= 1e-3) printf "%.2f ms", s*1e3;
    else if (s >= 1e-6) printf "%.1f µs", s*1e6; else printf "%.0f ns", s*1e9 }'
}

# ratio prints a/b to three significant digits, or — when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "—"; else printf "%.3g\n", a/b }'; }

# ci formats benchstat's confidence interval; none from a single run.
ci() { case "$1" in "" | "∞") ;; *) echo " ± $1" ;; esac; }

# stat NAMES CSV prints "median ci name" of the first of NAMES (comma
# separated: a benchmark renamed since) found in benchstat's CSV, sec/op (the
# first table; names lose their -GOMAXPROCS suffix).
stat() {
  awk -F, -v names="$1" '
    BEGIN { k = split(names, want, ",") }
    /^,sec\/op/ { on = 1; next }
    on && /^$/ { on = 0 }
    on { n = $1; sub(/-[0-9]+$/, "", n); got[n] = $2 " " $3 }
    END { for (i = 1; i <= k; i++) if (want[i] in got) { print got[want[i]], want[i]; exit } }' "$2"
}

# gobench PKG REGEX BENCHTIME ROW... runs PKG's benchmarks matching REGEX
# COUNT times and prints one table row per ROW, "what|ours|baseline" (benchstat
# names; baseline may be empty). ENVS, if set, prefixes go test (VAR=value ...).
gobench() {
  local pkg=$1 re=$2 bt=$3
  shift 3
  local raw=$tmp/$(echo "$pkg$re" | tr -c 'a-zA-Z0-9\n' _).txt
  local cmd="go test -run '^\$' -bench '$re' -benchtime $bt -count $COUNT $pkg"
  [ -n "${ENVS:-}" ] && cmd="$ENVS $cmd"
  echo "  $cmd" >&2
  if ! eval "$cmd" >"$raw" 2>&1; then
    tail -20 "$raw" >&2
    echo "| $pkg: \`go test\` failed (see the log of this run) | — | — | — | \`${cmd//|/\\|}\` |"
    return 1
  fi
  go run "$BENCHSTAT" -format csv "$raw" >"$raw.csv" 2>/dev/null
  local row what ours base o oci on b bci bn shown=${cmd//|/\\|}
  shown=${shown//"$tmp"/TMP}
  for row in "$@"; do
    IFS='|' read -r what ours base <<<"$row"
    o="" oci="" on="$ours"
    read -r o oci on < <(stat "$ours" "$raw.csv")
    b="" bci="" bn="$base"
    [ -n "$base" ] && read -r b bci bn < <(stat "$base" "$raw.csv")
    local bcell="—"
    [ -n "$base" ] && bcell="$(dur "$b")$(ci "$bci") (\`${bn:-$base}\`)"
    echo "| $what | $(dur "$o")$(ci "$oci") (\`${on:-$ours}\`) | $bcell | $(ratio "$o" "$b") | \`$shown\` |"
  done
}

area_spec() {
  echo "  bash bench/spec.sh" >&2
  bash bench/spec.sh >&2 || return 1
  go run ./bench/fleetgen -devices 1000 -out "$tmp/fleet1k" >&2 || return 1
  ENVS="SHOAL_BENCH_FLEET=$tmp/fleet1k" gobench ./spec Render "$(q 2000x 200x)" \
    "render one device of a 1,000-device fleet (\`bench/fleetgen\`; the validate rows above are \`bench/spec.sh\`'s)|Render|"
}

area_agent() {
  gobench ./agent PassNothingNew "$(q 200x 20x)" \
    "pass with nothing new, file://; baseline \`git fetch\` (git CLI) of the same repo|PassNothingNew/agent/file|PassNothingNew/git-cli-fetch/file" \
    "pass with nothing new, git:// on loopback; baseline \`git fetch\` from the same \`git daemon\`|PassNothingNew/agent/git-daemon|PassNothingNew/git-cli-fetch/git-daemon"
  # Idle memory of the release binary as a real process (target < 25 MB).
  local cmd="go run ./bench/agentrss -idle $(q 90s 20s) -scrape 15s"
  echo "  $cmd" >&2
  local out
  out=$($cmd 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" >&2
  echo "$out" | awk -v cmd="$cmd" '/^\| / && !/^\| what/ { printf "%s `%s` |\n", $0, cmd }'
}

area_reconcile() {
  gobench ./reconcile 'NoopPass50|ColdConverge20' "$(q 3x 1x)" \
    "no-op pass over 50 running apps (target < 100 ms, no Engine writes)|NoopPass50|" \
    "cold converge of 20 apps; baseline: a bash script of 20 \`docker create\` + \`docker start\`|ColdConverge20|ColdConverge20CLI"
}

area_updater() {
  local cmd="go run ./bench/updater $(q '-size 1024 -rounds 3' '-size 64 -rounds 1') -dir /var/tmp"
  echo "  $cmd" >&2
  local out
  out=$($cmd 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" >&2
  echo "$out" | awk -v cmd="$cmd" '
    /^image/ { img = $2 " " $3; sub(/,$/, "", img) }
    /^ours/ { split($0, a, ": "); split(a[2], o, "  "); ours = o[1] " (" o[2] ")" }
    /^baseline/ { split($0, a, ": "); sub(/^ +/, "", a[2]); split(a[2], b, "  "); base = b[1] " (" b[2] ")" }
    /^throughput ratio/ { r = $NF }
    /^peak RSS/ { rss = $(NF-1) " MiB" }
    END {
      printf "| install a %s image into a file slot (verify, stream + sha256, fsync, read-back verify), median; baseline `dd bs=4M conv=fsync` + `sha256sum` | %s | %s | %s (throughput) | `%s` |\n", img, ours, base, r, cmd
      printf "| peak RSS (VmHWM) of the installing process | %s | target < 40 MB | — | same run |\n", rss
    }'
}

area_attest() {
  local rc=0
  gobench ./attest 'Verify$|BaselineECDSAVerify|QuoteVerifySwtpm|BaselineTPMQuoteSwtpm' "$(q 3s 200x)" \
    "verify one quote (9 PCRs); baseline a bare ECDSA P-256 verify|Verify|BaselineECDSAVerify" \
    "quote + verify on swtpm; baseline a bare TPM2_Quote on the same swtpm|QuoteVerifySwtpm|BaselineTPMQuoteSwtpm" || rc=1
  gobench ./attest/tpmsim/ 'QuoteVerify|BaselineTPMQuote' "$(q 3s 100x)" \
    "quote + verify on the in-process simulator; baseline a bare TPM2_Quote on it|QuoteVerify|BaselineTPMQuote" || rc=1
  return $rc
}

area_hub() {
  local cmd="go run ./bench/hubload $(q '-devices 10000 -duration 20s' '-devices 1000 -duration 5s') -workers 32"
  echo "  $cmd" >&2
  local out
  out=$($cmd 2>"$tmp/hubload.err") || { cat "$tmp/hubload.err" >&2; echo "$out" >&2; return 1; }
  # hubload prints markdown rows: one "status ingest" row per setup, a
  # "baseline" row (same clients, a bare mutual-TLS server), enrolment rows.
  echo "$out" | awk -F'|' -v cmd="$cmd" '
    /^\| baseline/ { base = $3 + 0; next }
    /^\| status ingest/ { n++; setup[n] = $2; rate[n] = $3 + 0 }
    END {
      for (i = 1; i <= n; i++) {
        gsub(/^ +| +$/, "", setup[i])
        r = base ? sprintf("%.2f", rate[i] / base) : "—"
        printf "| %s: status reports/s | %.0f/s | %.0f/s: bare mutual-TLS decode + validate, no storage | %s | `%s` |\n", setup[i], rate[i], base, r, cmd
      }
    }'
  echo
  echo "hubload's own output, same run:"
  echo
  echo '```'
  echo "$out" | grep '^|'
  echo '```'
}

area_relay() {
  # A hub, a relay, an origin and Debian's nginx on loopback: 50 devices
  # fetch one release through the relay, from the origin, and from nginx;
  # status reports through the relay and straight to the hub.
  local cmd="go run ./bench/relayload $(q '-devices 50 -size 256' '-devices 10 -size 32') -report-devices 50 -reports $(q 40 10)"
  echo "  $cmd" >&2
  local out
  out=$($cmd 2>"$tmp/relayload.err") || { cat "$tmp/relayload.err" >&2; echo "$out" >&2; return 1; }
  echo "$out" | awk -v cmd="$cmd" '/^\| / { printf "%s `%s` |\n", $0, cmd }'
}

area_web() {
  gobench ./hub/web 'Page|Baseline|Refresh' "$(q 10x 3x)" \
    "overview, first page (50 rows); baseline: list every device and parse its latest report|Page/FirstPage|Baseline/ListAndParseAll" \
    "overview, filtered page|Page/FilteredPage|Baseline/ListAndParseAll" \
    "overview, last page|Page/LastPage|Baseline/ListAndParseAll" \
    "live endpoint, nothing new; baseline the store's CountByState|Page/Live|Baseline/CountByState" \
    "live endpoint right after one device reported; baseline CountByState|Refresh/Live,Refresh|Baseline/CountByState" \
    "fleet JSON (50 devices)|Page/FleetJSON|" \
    "device page|Page/Device|"
}

area_provision() {
  ENVS="SHOAL_BENCH_MB=$(q 500 64)" gobench ./provision . 2x \
    "create a bundle; baseline \`sha256sum\` + \`tar -cf\` + \`sync\` of the same tars|Create|CreateBaseline" \
    "apply a bundle; baseline \`tar -xf\` + \`sha256sum\` + \`sync\`|Apply|ApplyBaseline"
}

area_release() {
  echo "  make -s release" >&2
  local out
  out=$(make -s release 2>&1) || { echo "$out" >&2; return 1; }
  echo "$out" | awk '/MiB$/ {
    n = split($1, p, "/"); plat = p[n-1]; bin = p[n]; mib = $(NF-1)
    if (bin == "shoal-agent" && plat == "linux-arm64")
      printf "| %s, %s, static stripped | %s MiB (%.1f MB) | target 25 MB | %.2f× of target | `make release` |\n", bin, plat, mib, mib*1.048576, mib*1.048576/25
    else
      printf "| %s, %s, static stripped | %s MiB | — | — | `make release` |\n", bin, plat, mib
  }'
  # The hub's container image against the static binary it wraps; built
  # through the docker CLI with no registry, then removed.
  if docker info >/dev/null 2>&1; then
    local tag=shoal-hub-bench:$$ img bin
    echo "  deploy/hub-image.sh -t $tag" >&2
    if deploy/hub-image.sh -q -t "$tag" >/dev/null 2>&1; then
      img=$(docker image inspect -f '{{.Size}}' "$tag")
      bin=$(stat -c %s bin/hub-image/root/shoal)
      docker rmi "$tag" >/dev/null
      awk -v i="$img" -v b="$bin" 'BEGIN { printf "| hub container image (deploy/Dockerfile.hub: scratch, CA certificates, /tmp), linux/amd64 | %.1f MiB | the static `shoal` it holds: %.1f MiB | %.3f× | `deploy/hub-image.sh -t T`; `docker image inspect -f {{.Size}} T` |\n", i/1048576, b/1048576, i/b }'
    fi
  fi
}

area_sensor() {
  local cmd="go run ./bench/sensorload -sensors 2000 -rate 1 -duration $(q 30s 10s) -conns 64"
  echo "  $cmd" >&2
  # sensorload prints its table rows (ours, baseline, ratio, command).
  $cmd 2>"$tmp/sensorload.err" || { cat "$tmp/sensorload.err" >&2; return 1; }
}

# block AREA replaces the "make bench" block of docs/bench/AREA.md with stdin.
block() {
  local f=docs/bench/$1.md begin='<!-- make bench: begin -->' end='<!-- make bench: end -->'
  local body
  body=$(cat)
  [ -f "$f" ] || printf '# %s\n' "$1" >"$f"
  awk -v b="$begin" -v e="$end" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$f" |
    sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$tmp/block"
  { cat "$tmp/block"; echo; echo "$begin"; echo "$body"; echo "$end"; } >"$f"
}

failed=""
for area in $AREAS; do
  case " $ALL " in *" $area "*) ;; *) echo "unknown area $area (want: $ALL)" >&2; exit 2 ;; esac
  echo "== $area" >&2
  start=$(date +%s)
  if ! "area_$area" >"$tmp/$area.rows"; then
    failed="$failed $area"
  fi
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  {
    echo "## Latest \`make bench$( [ -n "$QUICK" ] && echo ' QUICK=1')\` run"
    echo
    echo "$(date -u +%Y-%m-%d), $(($(date +%s) - start)) s, load average at the end $load; Go benchmarks \`-count $COUNT\`, median ± 95 % confidence interval by benchstat. Ratio: ours / baseline (time; for the updater, throughput)."
    echo
    echo "| what | ours | baseline | ratio | command |"
    echo "|---|---|---|---|---|"
    cat "$tmp/$area.rows"
  } | block "$area"
done
bash bench/collect.sh
if [ -n "$failed" ]; then
  echo "failed:$failed" >&2
  exit 1
fi
