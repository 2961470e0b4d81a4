#!/usr/bin/env bash
# Ganeti 3.0.2 vs kvmd QEMU argv parity report. Always exits 0 (it is a report).
#
#   tests/ganeti-parity/compare.sh                 # all cases
#   tests/ganeti-parity/compare.sh 10-vnc-tcp-5901 # some cases (name or path)
#   tests/ganeti-parity/compare.sh --ganeti-only   # Ganeti's argv only
#   tests/ganeti-parity/compare.sh --ganeti expected   # never run Ganeti live
#   tests/ganeti-parity/compare.sh --update-expected   # refresh expected/*.json
#   tests/ganeti-parity/compare.sh --raw           # also the unnormalised argv
#   KVMD=/path/to/kvmd tests/ganeti-parity/compare.sh  # other kvmd binary
#
# For each case it runs `python3 ganeti_argv.py < case` (when Ganeti 3.0 is
# installed; else it reads expected/<case>.ganeti.json) and
# `target/debug/kvmd --print-argv CASEFILE` (tolerated when the binary or the
# flag is missing), normalises run-dir paths and fds, and prints the
# differences. kvmd is not built here: run `cargo build` first.
#
# Installing Ganeti 3.0.2 (library only, no daemon started), Debian bookworm:
#   apt-get update
#   # Containers without an init: keep maintainer scripts from starting
#   # services (ganeti-3.0 pulls in openssh-server). Docker images already
#   # ship this file; do not overwrite an existing one.
#   [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' \
#       > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
#   DEBIAN_FRONTEND=noninteractive \
#     apt-get install -y --no-install-recommends ganeti-3.0
# The library lands in /usr/share/ganeti/3.0 and runs under /usr/bin/python3
# (its python3-* dependencies are Debian packages; ganeti_argv.py re-executes
# itself with /usr/bin/python3 when started by another interpreter).
# ganeti-3.0's own postinst only byte-compiles and adds a dpkg diversion;
# nothing of Ganeti is started.

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=python3
command -v "$py" >/dev/null 2>&1 || py=/usr/bin/python3
"$py" "$here/compare.py" "$@" || echo "compare.py failed with status $?"
exit 0
