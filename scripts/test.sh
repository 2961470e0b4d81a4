#!/usr/bin/env bash
# Run every test: unit tests, and integration tests that boot the project's tiny guest under
# real QEMU (TCG) through the real daemon. As root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# install-deps may just have installed Rust with rustup.
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
bash tests/guest/build-guest.sh "${KVMD_GUEST_DIR:-/var/lib/kvmd/guest}"
# Two test threads: each test boots at most two guests, and this is sized for 2 cores.
cargo test --locked -- --test-threads=2
