#!/usr/bin/env bash
# Install what kvmd needs to build, run and test on Debian 12, as root. Idempotent.
set -euo pipefail

pkgs=(qemu-system-x86 busybox-static cpio kmod lz4 xz-utils iproute2 ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	[[ $EUID == 0 ]] || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
	echo "install-deps: apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# qemu-utils is not needed (and can conflict with a newer qemu-img already installed).
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
	[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null || { echo "install-deps: no cargo found; install a Rust toolchain (rustup) first" >&2; exit 1; }
echo "install-deps: ok ($(qemu-system-x86_64 --version | head -1); $(cargo --version))"
