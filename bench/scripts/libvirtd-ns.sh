#!/usr/bin/env bash
# Runs one private libvirtd inside the current network namespace, in a new
# mount namespace whose /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt and /var/log/libvirt are bind mounts of ROOT/{etc,run,
# lib,cache,log}. The bind mounts vanish with the mount namespace, i.e. when
# libvirtd (which this script execs into) exits.
#
# Usage (the benchmark calls it): ip netns exec NS libvirtd-ns.sh ROOT
# ROOT must have been prepared by the benchmark (config files in ROOT/etc).
set -euo pipefail
root=${1:?usage: libvirtd-ns.sh ROOT}
if [ -z "${FERRY_BENCH_IN_MNTNS:-}" ]; then
	export FERRY_BENCH_IN_MNTNS=1
	exec unshare --mount --propagation private -- "$0" "$@"
fi
for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt; do
	src=$root/${pair%%:*}
	dst=${pair#*:}
	mkdir -p "$src" "$dst"
	mount --bind "$src" "$dst"
done
exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid
