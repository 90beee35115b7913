#!/usr/bin/env bash
# Builds the hub's container image with no registry and no base image: the
# static shoal binary is built here first, staged under bin/hub-image/ with
# the host's CA certificates and a writable /tmp, and deploy/Dockerfile.hub
# copies that onto an empty (scratch) base. The build context is the
# repository root, trimmed by .dockerignore.
#
#   deploy/hub-image.sh [docker build flags...]     e.g. deploy/hub-image.sh -t shoal-hub:1.4.0
#   make hub-image                                  (tags shoal-hub:$(VERSION))
#
# Environment: GOARCH (default: this host's), VERSION (default: git describe),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt, Debian's
# ca-certificates), GO (default go), DOCKER (default docker).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
go=${GO:-go}
arch=${GOARCH:-$("$go" env GOARCH)}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
stage=bin/hub-image
if [ ! -s "$ca" ]; then
	echo "hub-image: no CA bundle at $ca (apt-get install ca-certificates, or set CA_BUNDLE)" >&2
	exit 1
fi
rm -rf "$stage"
mkdir -p "$stage/root/etc/ssl/certs" "$stage/state"
# /tmp: the hub clones a --fleet Git URL there (os.TempDir); sticky and
# world-writable as on any system, for the image's unprivileged user.
install -d -m 1777 "$stage/root/tmp"
install -m 0644 "$ca" "$stage/root/etc/ssl/certs/ca-certificates.crt"
echo "hub-image: building shoal for linux/$arch ($version)" >&2
CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$go" build -trimpath \
	-ldflags "-s -w -X github.com/shoalfleet/shoal/internal/version.Version=$version" \
	-o "$stage/root/shoal" ./cmd/shoal
# The classic builder: no BuildKit or buildx needed, as on Debian's docker.io.
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} "${DOCKER:-docker}" build -f deploy/Dockerfile.hub \
	--label "org.opencontainers.image.version=$version" "$@" .
