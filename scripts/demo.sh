#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: build kvmd and the tiny guest, start the
# daemon with config/demo.toml (which autostarts the "demo" VM), and show it running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# install-deps may just have installed Rust with rustup.
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
bash tests/guest/build-guest.sh /var/lib/kvmd/guest
cargo build --release --locked
install -m 755 target/release/kvmd target/release/kvmctl /usr/local/bin/
mkdir -p /etc/kvmd
[[ -e /etc/kvmd/kvmd.toml ]] || install -m 644 config/demo.toml /etc/kvmd/kvmd.toml

if kvmctl ping >/dev/null 2>&1; then
	echo "demo: kvmd is already running"
else
	nohup kvmd --config /etc/kvmd/kvmd.toml >>/var/log/kvmd.log 2>&1 &
	for _ in $(seq 100); do kvmctl ping >/dev/null 2>&1 && break; sleep 0.1; done
	echo "demo: kvmd started (pid $!, log /var/log/kvmd.log)"
fi
for _ in $(seq 150); do
	kvmctl --json info demo 2>/dev/null | grep -q '"state": "running"' && break
	sleep 0.2
done
kvmctl list
echo
echo "Try: kvmctl info demo | kvmctl stop demo | kvmctl start demo | socat - UNIX-CONNECT:/run/kvmd/demo/serial.sock"
