#!/bin/sh
# Creates the unprivileged system user every QEMU of ferry agent runs as
# (agent --qemu-user, config key qemu-user, default ferry-qemu) and lets it
# use userfaultfd, which a post-copy destination's QEMU opens after it has
# dropped root: /dev/userfaultfd (kernel >= 6.1) goes to the user's group,
# mode 0660, now and at every boot (a udev rule). Idempotent. Run by the
# Debian package's postinst and by hack/deps.sh.
# Usage: qemu-user.sh [USER]
set -eu
user=${1:-ferry-qemu}
if [ "$(id -u)" != 0 ]; then
	echo "qemu-user.sh: run as root (creates system user $user)" >&2
	exit 1
fi
if ! getent passwd "$user" >/dev/null; then
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --comment "Ferry QEMU processes" "$user"
fi
rules=/etc/udev/rules.d/60-ferry-userfaultfd.rules
want="KERNEL==\"userfaultfd\", GROUP=\"$user\", MODE=\"0660\""
if [ -d /etc/udev ] && [ "$(cat "$rules" 2>/dev/null)" != "$want" ]; then
	mkdir -p "$(dirname "$rules")"
	printf '%s\n' "$want" >"$rules"
fi
if [ -c /dev/userfaultfd ]; then
	chgrp "$user" /dev/userfaultfd
	chmod 0660 /dev/userfaultfd
fi
