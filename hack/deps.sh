#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 machine, idempotently: the Debian
# packages below (only those missing) and a Go toolchain new enough for go.mod.
# Usage: hack/deps.sh [extra-package ...]
set -euo pipefail

pkgs=(qemu-system-x86 qemu-utils busybox-static linux-image-cloud-amd64 iproute2 cpio kmod procps "$@")

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "hack/deps.sh: missing packages ${missing[*]}; run as root or apt-get install them" >&2
		exit 1
	fi
	echo "hack/deps.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go: the machine image ships it in /usr/local/go; otherwise Debian's go plus
# the toolchain go.mod asks for, fetched through the Go module proxy.
export PATH="$PATH:/usr/local/go/bin"
want=$(awk '/^go /{print $2; exit}' "$(dirname "$0")/../go.mod")
if ! command -v go >/dev/null; then
	echo "hack/deps.sh: no go found; installing Debian's golang-go and the go$want toolchain" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
	echo "hack/deps.sh: go $have is older than go.mod's $want; using GOTOOLCHAIN=go$want" >&2
	GOTOOLCHAIN="go$want" go version >/dev/null
fi
go mod download
