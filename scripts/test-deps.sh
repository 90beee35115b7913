#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real, when they are
# missing. Idempotent: a machine that has them all is left alone. As root it
# installs them; otherwise it prints the exact command to run.
set -euo pipefail

# command -> Debian package that provides it
declare -A need=(
  [swtpm]=swtpm
  [swtpm_ioctl]=swtpm-tools
  [fw_printenv]=libubootenv-tool
  [grub-editenv]=grub-common
  [chromium]=chromium
  [chronyd]=chrony
  [git]=git
  [sshd]=openssh-server
  [ansible-playbook]=ansible
  [zstd]=zstd
  [systemd-analyze]=systemd
  [grub-script-check]=grub-common
  [losetup]=mount
  [gcc]=gcc
  [strace]=strace
  [promtool]=prometheus
  [mosquitto]=mosquitto
  [mosquitto_sub]=mosquitto-clients
  [nginx]=nginx
)
# PostgreSQL's server binaries live outside PATH on Debian.
pg_missing() { ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
pg_missing && missing+=(postgresql)
# The TPM simulator (attest/tpmsim, the demo's agent) is C linked against libcrypto.
[ -f /usr/include/openssl/rand.h ] || missing+=(libssl-dev)
# The hub's container image carries the host's CA bundle (deploy/hub-image.sh).
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)

if [ ${#missing[@]} -eq 0 ]; then
  echo "test-deps: all test packages present"
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: missing packages; run as root:"
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi
echo "test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "test-deps: done"
