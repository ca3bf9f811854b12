#!/usr/bin/env bash
# Installs what Ferry needs on a Debian 12 machine, idempotently: the Debian
# packages below (only those missing) and a Go toolchain new enough for go.mod.
# Usage: hack/deps.sh [--libvirt] [extra-package ...]
#   --libvirt  also libvirt 11.3 (the benchmark's peer), from bookworm-backports
#              on Debian 12 like QEMU, driving the same QEMU 10 binary.
set -euo pipefail

want_libvirt=
if [ "${1:-}" = --libvirt ]; then
	want_libvirt=1
	shift
fi
# chromium-headless-shell: the browser of the dashboard's end-to-end test
# (test/e2e TestDashboardInBrowser).
pkgs=(busybox-static linux-image-cloud-amd64 iproute2 cpio kmod procps chromium-headless-shell "$@")
# QEMU 10.0 is the platform (docs/design.md): Debian 13's, which Debian 12
# takes from bookworm-backports. A machine already on Debian 13 has it in its
# release.
qemu_pkgs=(qemu-system-x86 qemu-utils)
qemu_min=10.0

libvirt_pkgs=(libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu)
libvirt_min=11.3

# at_least MIN PKG... succeeds when every PKG is installed at version >= MIN.
at_least() {
	local min=$1 v p
	shift
	for p in "$@"; do
		v=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null) || return 1
		case "$v" in "install ok installed "*) ;; *) return 1 ;; esac
		v=${v##* }; v=${v#*:}
		[ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n1)" = "$min" ] || return 1
	done
}

qemu_ok() { at_least "$qemu_min" "${qemu_pkgs[@]}"; }

# add_backports makes bookworm-backports available from the Debian mirror
# this machine already uses (only on Debian 12).
add_backports() {
	. /etc/os-release
	[ "${VERSION_CODENAME:-}" = bookworm ] || return 0
	local f=/etc/apt/sources.list.d/ferry-bookworm-backports.sources
	[ -f "$f" ] && return 0
	local uri
	uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	[ -n "$uri" ] || uri=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$uri" ] || { echo "hack/deps.sh: cannot find the Debian mirror in /etc/apt (debian.sources or sources.list)" >&2; exit 1; }
	printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$f"
}

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
if ! qemu_ok; then
	if [ "$(id -u)" != 0 ]; then
		echo "hack/deps.sh: QEMU >= $qemu_min missing; run as root" >&2
		exit 1
	fi
	echo "hack/deps.sh: installing QEMU $qemu_min (${qemu_pkgs[*]}, bookworm-backports on Debian 12)" >&2
	export DEBIAN_FRONTEND=noninteractive
	add_backports
	apt-get update -qq || true
	. /etc/os-release
	if [ "${VERSION_CODENAME:-}" = bookworm ]; then
		apt-get install -y -qq --no-install-recommends -t bookworm-backports "${qemu_pkgs[@]}" >/dev/null
	else
		apt-get install -y -qq --no-install-recommends "${qemu_pkgs[@]}" >/dev/null
	fi
	qemu_ok || { echo "hack/deps.sh: QEMU $qemu_min did not install ($(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null))" >&2; exit 1; }
fi
if [ -n "$want_libvirt" ] && ! at_least "$libvirt_min" "${libvirt_pkgs[@]}"; then
	if [ "$(id -u)" != 0 ]; then
		echo "hack/deps.sh: libvirt >= $libvirt_min missing; run as root" >&2
		exit 1
	fi
	echo "hack/deps.sh: installing libvirt $libvirt_min (${libvirt_pkgs[*]}, bookworm-backports on Debian 12)" >&2
	export DEBIAN_FRONTEND=noninteractive
	add_backports
	apt-get update -qq || true
	. /etc/os-release
	if [ "${VERSION_CODENAME:-}" = bookworm ]; then
		apt-get install -y -qq --no-install-recommends -t bookworm-backports "${libvirt_pkgs[@]}" >/dev/null
	else
		apt-get install -y -qq --no-install-recommends "${libvirt_pkgs[@]}" >/dev/null
	fi
	at_least "$libvirt_min" "${libvirt_pkgs[@]}" || { echo "hack/deps.sh: libvirt $libvirt_min did not install ($(dpkg-query -W -f='${Version}' libvirt-daemon-system 2>/dev/null))" >&2; exit 1; }
	# libvirt must drive the QEMU 10 binary installed above.
	qemu_ok || { echo "hack/deps.sh: installing libvirt replaced QEMU $qemu_min" >&2; exit 1; }
fi

# The unprivileged user every QEMU runs as (agent --qemu-user default) and
# its access to /dev/userfaultfd (post-copy): what the package's postinst does.
if [ "$(id -u)" = 0 ]; then
	sh "$(dirname "$0")/../packaging/qemu-user.sh" ferry-qemu
elif ! getent passwd ferry-qemu >/dev/null; then
	echo "hack/deps.sh: user ferry-qemu missing; run as root (packaging/qemu-user.sh)" >&2
	exit 1
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
