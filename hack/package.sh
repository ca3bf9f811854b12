#!/usr/bin/env bash
# Builds dist/ferry_<version>_amd64.deb (or OUT_DIR) with nfpm.
# Usage: hack/package.sh [OUT_DIR]   (env FERRY_VERSION overrides the version)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin
GO=${GO:-go}
NFPM_VERSION=v2.45.2
out=${1:-dist}
if [[ -z ${FERRY_VERSION:-} ]]; then
	if tag=$(git describe --tags --abbrev=0 2>/dev/null); then
		FERRY_VERSION=${tag#v}
	else
		# No release tag: a version Debian orders by commit time.
		FERRY_VERSION=0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S).$(git rev-parse --short=12 HEAD)
	fi
fi
export FERRY_VERSION
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
export FERRY_STAGE=$stage
CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-X github.com/ferryvm/ferry/internal/version.override=$FERRY_VERSION -X github.com/ferryvm/ferry/internal/version.revision=$(git rev-parse HEAD 2>/dev/null || true)" -o "$stage/ferry" ./cmd/ferry
"$stage/ferry" gen-docs --man "$stage/man" --completions "$stage/completions"
gzip -9n "$stage"/man/*.1
mkdir -p "$out"
# The pinned nfpm from the module proxy (go run caches the build).
sed "s|\${FERRY_STAGE}|$stage|g" packaging/nfpm.yaml >"$stage/nfpm.yaml"
"$GO" run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" package --config "$stage/nfpm.yaml" --packager deb --target "$out/ferry_${FERRY_VERSION}_amd64.deb" >&2
echo "$out/ferry_${FERRY_VERSION}_amd64.deb"
