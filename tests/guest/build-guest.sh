#!/usr/bin/env bash
# build-guest.sh [OUTDIR] - build the tiny Linux test guest for kvmd.
#
# Produces, from Debian packages only (no kernel build, no network beyond
# the Debian mirror):
#   OUTDIR/vmlinux         uncompressed ELF kernel (PVH-bootable: qemu -kernel)
#   OUTDIR/vmlinuz         the packaged bzImage, unchanged
#   OUTDIR/initramfs.gz    busybox + virtio modules + tests/guest/rootfs/*
#   OUTDIR/kernel-version  the kernel release (uname -r), one line
#   OUTDIR/stamp           hash of the build inputs (cache key)
#
# OUTDIR defaults to ${KVMD_GUEST_DIR:-/var/lib/kvmd/guest}. If OUTDIR already
# holds a build whose stamp matches the inputs (this script, the files under
# rootfs/, the kernel package name and version), nothing is done.
#
# Environment:
#   KVMD_GUEST_DIR           default OUTDIR
#   KVMD_GUEST_KERNEL_META   kernel meta package (default linux-image-cloud-amd64)
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SCRIPT")
ROOTFS_SRC=$HERE/rootfs
OUTDIR=${1:-${KVMD_GUEST_DIR:-/var/lib/kvmd/guest}}
OUTDIR=${OUTDIR%/}
KERNEL_META=${KVMD_GUEST_KERNEL_META:-linux-image-cloud-amd64}
# Debian package -> a file it must provide.
REQUIRED_PKGS=(
	"busybox-static:/bin/busybox"
	"cpio:/bin/cpio"
	"kmod:/sbin/depmod"
	"lz4:/usr/bin/lz4"
	"xz-utils:/usr/bin/xz"
	"gzip:/bin/gzip"
)
# Executables inside the initramfs (modes are forced, not taken from git).
ROOTFS_EXECS=(init etc/rc.ready etc/acpi/PWRF/00000080 sbin/uevent.sh bin/gx)

START=$SECONDS
APT_UPDATED=0

log() { printf 'guest: %s\n' "$*" >&2; }
die() {
	printf 'guest: error: %s\n' "$*" >&2
	exit 1
}

export DEBIAN_FRONTEND=noninteractive LC_ALL=C

apt_update() {
	[[ $APT_UPDATED == 1 ]] && return 0
	[[ $EUID == 0 ]] || die "apt-get update needed but not running as root"
	log "apt-get update"
	apt-get update -qq >&2 || die "apt-get update failed"
	APT_UPDATED=1
}

pkg_installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

ensure_tools() {
	local entry pkg file missing=()
	for entry in "${REQUIRED_PKGS[@]}"; do
		pkg=${entry%%:*}
		file=${entry#*:}
		if ! pkg_installed "$pkg" || [[ ! -x $file ]]; then
			missing+=("$pkg")
		fi
	done
	((${#missing[@]} == 0)) && return 0
	[[ $EUID == 0 ]] || die "missing packages (run as root or install): ${missing[*]}"
	apt_update
	log "apt-get install ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

# Sets KPKG (e.g. linux-image-6.1.0-56-cloud-amd64) and KPKG_VERSION.
#
# apt-cache costs ~0.5 s per call here (Debian container images disable the
# binary package cache), so the common case is one call: the meta package's
# Depends line normally pins the versioned package, e.g.
#   Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
resolve_kernel() {
	local try dep
	for try in 1 2; do
		KPKG='' KPKG_VERSION=''
		dep=$(apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null |
			sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*\)\( (= \([^)]*\))\)\{0,1\}.*$/\1 \3/p' |
			head -n 1) || true
		read -r KPKG KPKG_VERSION <<<"$dep" || true
		if [[ -z $KPKG ]]; then # fall back to apt-cache depends
			KPKG=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
				sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1) || true
		fi
		if [[ -n $KPKG && -z $KPKG_VERSION ]]; then
			KPKG_VERSION=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null |
				sed -n 's/^Version: //p' | head -n 1) || true
		fi
		[[ -n $KPKG && -n $KPKG_VERSION ]] && return 0
		[[ $try == 1 ]] && apt_update
	done
	die "cannot resolve the kernel package behind $KERNEL_META (apt-cache depends)"
}

# Hash of everything the output depends on.
input_hash() {
	{
		echo "build-guest v1"
		cat "$SCRIPT"
		(cd "$ROOTFS_SRC" && find . \( -type f -o -type l \) -print | LC_ALL=C sort) |
			while IFS= read -r f; do
				printf '== %s\n' "$f"
				if [[ -L $ROOTFS_SRC/$f ]]; then
					readlink "$ROOTFS_SRC/$f"
				else
					cat "$ROOTFS_SRC/$f"
				fi
			done
		echo "kernel=$KPKG $KPKG_VERSION"
	} | sha256sum | cut -d' ' -f1
}

is_cached() {
	[[ -s $OUTDIR/vmlinux && -s $OUTDIR/initramfs.gz && -f $OUTDIR/stamp ]] &&
		[[ $(<"$OUTDIR/stamp") == "$HASH" ]]
}

le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }

# Decompress FILE (format chosen by its magic) to stdout.
decompress() {
	local magic
	magic=$(od -An -tx1 -N6 "$1" | tr -d ' \n')
	case $magic in
	02214c18*) lz4 -dc <"$1" ;;
	1f8b08*) gzip -dc <"$1" ;;
	fd377a585a00) xz -dc --single-stream <"$1" ;;
	28b52ffd*)
		command -v zstd >/dev/null || die "kernel is zstd-compressed; apt-get install zstd"
		zstd -dcq <"$1"
		;;
	*) return 1 ;;
	esac
}

is_elf() { [[ $(od -An -tx1 -N4 "$1" | tr -d ' \n') == 7f454c46 ]]; }

# extract_vmlinux BZIMAGE OUT: uncompressed ELF kernel from a bzImage.
extract_vmlinux() {
	local img=$1 out=$2 tmp=$WORK/payload
	local setup_sects payload_offset payload_length start want magic off

	# 1. Exact: the setup header (boot protocol >= 2.08) says where the
	#    compressed payload is; its last 4 bytes are the uncompressed size,
	#    which lz4/xz/zstd would reject as trailing garbage, so cut them.
	if [[ $(od -An -c -j 514 -N4 "$img" | tr -d ' ') == HdrS ]] &&
		(($(od -An -tu2 -j 518 -N2 "$img") >= 0x208)); then
		setup_sects=$(od -An -tu1 -j 497 -N1 "$img" | tr -d ' ')
		((setup_sects == 0)) && setup_sects=4
		payload_offset=$(le32 "$img" 584)
		payload_length=$(le32 "$img" 588)
		start=$(((setup_sects + 1) * 512 + payload_offset))
		dd if="$img" of="$tmp" iflag=skip_bytes,count_bytes bs=1M \
			skip="$start" count="$payload_length" status=none
		want=$(le32 "$tmp" $((payload_length - 4)))
		truncate -s $((payload_length - 4)) "$tmp"
		if decompress "$tmp" >"$out" 2>/dev/null && is_elf "$out" &&
			[[ $(stat -c %s "$out") == "$want" ]]; then
			log "vmlinux: payload at $start ($(od -An -tx1 -N4 "$tmp" | tr -d ' \n')), $want bytes"
			return 0
		fi
		log "vmlinux: setup header payload did not decompress, scanning for magics"
	fi

	# 2. Fallback: try every LZ4-legacy / xz / gzip / zstd magic in the file
	#    and keep the first that decompresses to an ELF image. Decoders may
	#    complain about the trailing bytes; the ELF check decides.
	for magic in '\x02\x21\x4c\x18' '\xfd\x37\x7a\x58\x5a\x00' '\x1f\x8b\x08' '\x28\xb5\x2f\xfd'; do
		while IFS=: read -r off _; do
			tail -c +$((off + 1)) "$img" >"$tmp"
			decompress "$tmp" >"$out" 2>/dev/null || true
			if is_elf "$out"; then
				log "vmlinux: found compressed kernel at offset $off by magic scan"
				return 0
			fi
		done < <(LC_ALL=C grep -obUaP "$magic" "$img" | head -n 8 || true)
	done
	die "could not extract an ELF vmlinux from $img"
}

build() {
	local deb kroot kver stage mod line
	local -a kos=() mods=()

	# --- kernel package -------------------------------------------------
	mkdir -p "$WORK/dl"
	# apt's download sandbox user must be able to write here.
	if [[ $EUID == 0 ]] && id _apt >/dev/null 2>&1; then
		chown _apt "$WORK/dl"
	fi
	log "downloading $KPKG=$KPKG_VERSION"
	if ! (cd "$WORK/dl" && apt-get download -qq "$KPKG=$KPKG_VERSION" >&2); then
		apt_update
		(cd "$WORK/dl" && apt-get download -qq "$KPKG=$KPKG_VERSION" >&2) ||
			die "apt-get download $KPKG failed"
	fi
	deb=$(find "$WORK/dl" -maxdepth 1 -name '*.deb' -print -quit)
	[[ -n $deb ]] || die "apt-get download produced no .deb"
	kroot=$(readlink -f "$WORK")/kroot
	dpkg-deb -x "$deb" "$kroot"
	shopt -s nullglob
	local vmlinuz=("$kroot"/boot/vmlinuz-*)
	shopt -u nullglob
	((${#vmlinuz[@]} == 1)) || die "expected one boot/vmlinuz-* in $deb"
	kver=${vmlinuz[0]##*/vmlinuz-}
	[[ -d $kroot/lib/modules/$kver ]] || die "no lib/modules/$kver in $deb"

	extract_vmlinux "${vmlinuz[0]}" "$NEW/vmlinux"
	cp "${vmlinuz[0]}" "$NEW/vmlinuz"
	echo "$kver" >"$NEW/kernel-version"

	# --- modules --------------------------------------------------------
	depmod -b "$kroot" "$kver"
	while IFS= read -r mod; do
		mod=${mod%%#*}
		mod=${mod%%[[:space:]]*}
		[[ -n $mod ]] || continue
		local deps
		deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$mod" 2>&1) ||
			die "module $mod: $deps"
		while IFS= read -r line; do
			case $line in
			"insmod "*)
				line=${line#insmod }
				line=${line%% *}
				kos+=("${line#"$kroot"/}")
				;;
			builtin\ *) log "module $mod is built into $kver" ;;
			esac
		done <<<"$deps"
		mods+=("$mod")
	done <"$ROOTFS_SRC/etc/modules"

	# --- initramfs staging root ------------------------------------------
	stage=$WORK/initramfs
	mkdir -p "$stage"
	(cd "$stage" && mkdir -p bin sbin usr/bin usr/sbin etc dev proc sys run tmp \
		root mnt var/log "lib/modules/$kver")
	ln -s ../run "$stage/var/run"
	chmod 1777 "$stage/tmp"
	chmod 700 "$stage/root"
	# Device nodes needed before devtmpfs is mounted (root only; the kernel's
	# built-in initramfs provides /dev/console otherwise).
	if [[ $EUID == 0 ]]; then
		mknod -m 600 "$stage/dev/console" c 5 1
		mknod -m 666 "$stage/dev/null" c 1 3
	fi

	install -m 755 /bin/busybox "$stage/bin/busybox"
	local applet n=0
	while IFS= read -r applet; do
		# --list-full gives e.g. "sbin/acpid"; skip top-level "linuxrc".
		[[ $applet == */* && $applet != bin/busybox ]] || continue
		[[ -e $stage/$applet ]] && continue
		mkdir -p "$stage/${applet%/*}"
		ln -s /bin/busybox "$stage/$applet"
		n=$((n + 1))
	done < <(/bin/busybox --list-full)
	((n > 100)) || die "busybox --list-full gave only $n applets"

	cp -a "$ROOTFS_SRC/." "$stage/"
	local f
	for f in "${ROOTFS_EXECS[@]}"; do
		[[ -f $stage/$f ]] || die "rootfs/$f missing"
		chmod 755 "$stage/$f"
	done
	chown -R 0:0 "$stage" 2>/dev/null || true

	local ko
	for ko in "${kos[@]}"; do
		[[ -e $stage/$ko ]] && continue
		mkdir -p "$stage/${ko%/*}"
		cp "$kroot/$ko" "$stage/$ko"
	done
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		[[ -f $kroot/lib/modules/$kver/$f ]] && cp "$kroot/lib/modules/$kver/$f" "$stage/lib/modules/$kver/"
	done
	depmod -b "$stage" "$kver"
	# busybox modprobe reads the text files; the kmod .bin indexes are dead weight.
	rm -f "$stage/lib/modules/$kver"/*.bin

	(cd "$stage" && find . -mindepth 1 -print | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --quiet) | gzip -9 -n >"$NEW/initramfs.gz"

	NKOS=$(sort -u < <(printf '%s\n' "${kos[@]}") | wc -l)
	NMODS=${#mods[@]}
	KVER=$kver
}

main() {
	[[ -d $ROOTFS_SRC ]] || die "missing $ROOTFS_SRC"
	command -v apt-cache >/dev/null || die "needs a Debian system (apt-cache)"

	resolve_kernel
	HASH=$(input_hash)
	if is_cached; then
		echo "guest: cached in $OUTDIR"
		exit 0
	fi

	mkdir -p "$OUTDIR"
	# Serialize concurrent builders; re-check once we hold the lock.
	exec 9>"$OUTDIR/.lock"
	flock 9
	if is_cached; then
		echo "guest: cached in $OUTDIR"
		exit 0
	fi

	ensure_tools

	WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvmd-guest.XXXXXX")
	# Staging for the outputs lives in OUTDIR so the final mv is a rename.
	NEW=$(mktemp -d "$OUTDIR/.new.XXXXXX")
	trap 'rm -rf "$WORK" "$NEW"' EXIT
	chmod 755 "$WORK"

	build

	echo "$HASH" >"$NEW/stamp"
	# Invalidate first, publish the stamp last: a build that dies in between
	# leaves no stamp, so the next run rebuilds instead of trusting it.
	rm -f "$OUTDIR/stamp"
	local f
	for f in vmlinux vmlinuz initramfs.gz kernel-version stamp; do
		chmod 644 "$NEW/$f"
		mv -f "$NEW/$f" "$OUTDIR/$f"
	done

	echo "guest: built in $OUTDIR in $((SECONDS - START))s"
	echo "guest:   kernel      $KPKG $KPKG_VERSION ($KVER)"
	for f in vmlinux vmlinuz initramfs.gz; do
		printf 'guest:   %-12s %6s KiB\n' "$f" $(($(stat -c %s "$OUTDIR/$f") / 1024))
	done
	echo "guest:   modules     $NMODS requested, $NKOS .ko files with dependencies"
}

main "$@"
