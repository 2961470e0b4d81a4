#!/usr/bin/env bash
# Install what kvmd needs to build, run and test on Debian 12, as root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(qemu-system-x86 qemu-block-extra busybox-static cpio kmod lz4 xz-utils iproute2 openssh-client openssh-server ca-certificates curl gcc libc6-dev prometheus ganeti)
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
if ! command -v cargo >/dev/null; then
	# Debian 12's own cargo (1.63) is too old: install rustup for this user, from rustup's
	# release server, checked against its published SHA-256.
	echo "install-deps: installing rustup"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	url=https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init
	curl --proto '=https' --tlsv1.2 -fsSL -o "$tmp/rustup-init" "$url"
	want=$(curl --proto '=https' --tlsv1.2 -fsSL "$url.sha256" | cut -d' ' -f1)
	echo "$want  $tmp/rustup-init" | sha256sum -c --quiet -
	chmod 0755 "$tmp/rustup-init"
	"$tmp/rustup-init" -y --no-modify-path --profile minimal --default-toolchain none
	export PATH=$HOME/.cargo/bin:$PATH
fi
if command -v rustup >/dev/null; then
	# The pinned toolchain of rust-toolchain.toml, with rustfmt and clippy (a no-op when there).
	channel=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
	rustup toolchain install "$channel" --profile minimal -c rustfmt -c clippy
fi
command -v cargo >/dev/null || { echo "install-deps: no cargo found and rustup could not install one" >&2; exit 1; }
echo "install-deps: ok ($(qemu-system-x86_64 --version | head -1); $(cargo --version))"
