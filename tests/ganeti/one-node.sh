#!/bin/bash
# one-node.sh - a REAL single-node Ganeti 3.0 cluster whose kvm hypervisor is kvmd, inside
# private namespaces on this machine: kvmd and Ganeti's daemons start there, Ganeti's
# hypervisor package is the one `kvmd-ganeti render` makes (bind-mounted over Ganeti's, so
# nothing of the host's is changed), and the instance's life is checked step by step through
# gnt-instance and kvmctl. Then everything is torn down.
#
# Usage (as root):  KVMD_BIN=... KVMCTL_BIN=... tests/ganeti/one-node.sh LAB_DIR
# Run by tests/ganeti_cluster.rs. Exit code 0 = every check passed, nothing left behind.
# Timings go to $LAB/nodeA/timings.txt. Written with the recipe of a helper session that
# brought a one-node cluster up here with Ganeti's own KVM code.
#
# Layout (host side):
#   $LAB/nodeA/etc-ganeti   -> /etc/ganeti      (seeded with the package's symlinks)
#   $LAB/nodeA/var-lib      -> /var/lib/ganeti
#   $LAB/nodeA/var-log      -> /var/log/ganeti
#   $LAB/nodeA/run          -> /run  (so also /var/run, /var/lock; hides host /run)
#   $LAB/nodeA/srv          -> /srv  (OS definition + file storage dir)
#   $LAB/nodeA/hosts        -> /etc/hosts
#   $LAB/nodeA/timings.txt, $LAB/nodeA/run.log  results
#
# Namespaces: net + uts + mount (propagation private) + pid (with its own /proc).
# The PID namespace is the safety net: when the inner script (PID 1 there)
# exits, the kernel SIGKILLs every daemon/qemu left in it, and the network
# namespace (bridge, taps, addresses) vanishes with the last process.
set -euo pipefail

LAB=${LAB:?the lab directory}
REPO=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
KVMD_BIN=${KVMD_BIN:?kvmd binary}
KVMCTL_BIN=${KVMCTL_BIN:?kvmctl binary}
GANETI_HV=/usr/share/ganeti/3.0/ganeti/hypervisor
NODE=$LAB/nodeA
NODE_NAME=node1.example.test
CLUSTER_NAME=cluster1.example.test
INST_NAME=inst1.example.test
BRIDGE=gnt-br0
GUEST=/var/lib/kvmd/guest          # kernel/initramfs built by the kvmd project

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[$(date +%T)] $*"; }

###########################################################################
# Inner part: runs as PID 1 of the new pid/net/uts/mount namespaces.
###########################################################################
inner() {
  local SUBNET=$1
  local NODE_IP=$SUBNET.10 CLUSTER_IP=$SUBNET.100

  teardown() {
    local rc=$?
    set +e
    log "teardown (rc=$rc)"
    if [ -f /var/lib/ganeti/config.data ]; then
      gnt-instance shutdown --timeout=0 --force "$INST_NAME" >/dev/null 2>&1
      gnt-instance remove -f "$INST_NAME" >/dev/null 2>&1
      local t0; t0=$(now)
      gnt-cluster destroy --yes-do-it; local drc=$?
      echo "cluster_destroy_s=$(elapsed "$t0" "$(now)") rc=$drc" >> "$NODE/timings.txt"
    fi
    # Stop whatever daemon-util still knows about (reverse start order) ...
    /usr/lib/ganeti/daemon-util stop-all >/dev/null 2>&1
    # ... and anything else (qemu, socat, stray daemons): we are PID 1 of a
    # private PID namespace, so "every process except us" is well defined.
    local p
    for p in $(ps -eo pid= | awk '$1 != 1'); do
      [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || kill -TERM "$p" 2>/dev/null
    done
    sleep 1
    ip link del "$BRIDGE" 2>/dev/null
    local left_ns; left_ns=$(me=$BASHPID; ps -eo pid=,comm= | awk -v me="$me" '$1!=1 && $1!=me && $2!="ps" && $2!="awk"')
    log "processes left in namespace (besides this script): ${left_ns:-none}"
    exit $rc
  }
  trap teardown EXIT

  # ---- mounts --------------------------------------------------------------
  # /run first and "mount -n": libmount would otherwise create
  # /run/mount/utab* in the HOST's /run for the bind mounts.
  mount -n --make-rprivate /                    # belt and braces
  mount -n --bind "$NODE/run"        /run       # /var/run and /var/lock point here
  mount -n --bind "$NODE/etc-ganeti" /etc/ganeti
  mount -n --bind "$NODE/var-lib"    /var/lib/ganeti
  mount -n --bind "$NODE/var-log"    /var/log/ganeti
  mount -n --bind "$NODE/srv"        /srv
  mount -n --bind "$NODE/hosts"      /etc/hosts
  # A sysfs mounted in the host netns shows the HOST's /sys/class/net; Ganeti
  # checks bridges via /sys/class/net/BR/bridge, so remount sysfs in our netns.
  mount -n -t sysfs sysfs /sys
  # Ganeti's kvm type -> kvmd: the package kvmd-ganeti renders, over Ganeti's.
  mount -n --bind "$NODE/hypervisor" "$GANETI_HV"
  mkdir -p /run/lock /run/ganeti /run/kvmd

  # ---- identity + network --------------------------------------------------
  hostname "$NODE_NAME"
  ip link set lo up
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  log "hostname=$(hostname) -> $(getent hosts "$NODE_NAME")"

  # ---- kvmd, inside the namespace (its QEMUs live and die with it) ------------
  "$KVMD_BIN" --config "$NODE/kvmd.toml" --log kvmd=info > "$NODE/kvmd.log" 2>&1 &
  local i
  for i in $(seq 1 100); do
    "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  K() { "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock "$@"; }
  K ping
  fail() { log "FAILED: $*"; exit 1; }
  expect() { # what, command...: the command must succeed
    local what=$1; shift
    "$@" || fail "$what"
    log "ok: $what"
  }
  status() { gnt-instance list --no-headers -o status "$INST_NAME" | tr -d ' '; }
  wait_status() { # want, seconds
    local j
    for j in $(seq 1 $(( $2 * 4 ))); do
      [ "$(status)" = "$1" ] && return 0
      sleep 0.25
    done
    log "status is $(status), not $1"
    return 1
  }
  kjson() { K --json info "$INST_NAME" | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['instances'][0]$1)"; }
  not_running() { [ "$(kjson "['state']")" != running ]; }
  kinfo_has() { [[ $(K info "$INST_NAME") == *"$1"* ]]; }
  kinfo_lacks() { ! kinfo_has "$1"; }

  # ---- cluster init --------------------------------------------------------
  # kvm_flag=disabled: kvmd runs TCG (this host cannot run KVM guests).
  local HV="kvm:kvm_flag=disabled,kvm_path=/usr/bin/qemu-system-x86_64,vnc_bind_address="
  HV="$HV,kernel_path=$GUEST/vmlinux,initrd_path=$GUEST/initramfs.gz"
  HV="$HV,root_path=/dev/ram0,serial_console=true,user_shutdown=true"
  local t0; t0=$(now)
  gnt-cluster init \
    --no-ssh-init --no-etc-hosts --user-shutdown=true \
    --enabled-hypervisors=kvm -H "$HV" \
    --enabled-disk-templates=file \
    --file-storage-dir=/srv/ganeti/file-storage \
    --master-netdev="$BRIDGE" \
    --nic-parameters="mode=bridged,link=$BRIDGE" \
    "$CLUSTER_NAME"
  echo "cluster_init_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  for i in $(seq 1 40); do
    ip -4 -o addr show dev "$BRIDGE" | grep -q " $CLUSTER_IP/" && break
    sleep 0.5
  done

  # ---- add: the instance runs under kvmd ------------------------------------
  t0=$(now)
  expect "gnt-instance add starts it" gnt-instance add -t file -o noop+default \
    --disk 0:size=1G -B maxmem=192,minmem=128 --no-name-check --no-ip-check \
    -n "$NODE_NAME" "$INST_NAME"
  echo "instance_add_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  expect "gnt-instance list says running" wait_status running 30
  K info "$INST_NAME"
  expect "kvmd runs it for Ganeti" kinfo_has "managed by:   ganeti"
  expect "not Ganeti's own KVM code" test ! -e "/run/ganeti/kvm-hypervisor/pid/$INST_NAME"
  local pid; pid=$(kjson "['pid']")
  expect "its QEMU is one kvmd started" grep -q "$NODE/kvmd-run/$INST_NAME" "/proc/$pid/cmdline"
  expect "gnt-instance info" sh -c "gnt-instance info '$INST_NAME' | grep 'actual state is up'"
  local serial=$NODE/kvmd-run/$INST_NAME/serial.log
  for i in $(seq 1 240); do grep -aq GUEST-READY "$serial" 2>/dev/null && break; sleep 0.25; done
  expect "the guest booted" grep -aq GUEST-READY "$serial"

  # ---- console: the command Ganeti prints --------------------------------------
  local cmd; cmd=$(gnt-instance console --show-cmd "$INST_NAME")
  log "console command: $cmd"
  expect "the console command is kvmctl's" sh -c 'echo "$0" | grep -q "kvmctl --socket /run/kvmd/kvmd.sock console"' "$cmd"
  # What it runs on the node (here, without the ssh hop: no sshd in the sandbox): type a
  # command into the guest through it, see its output, detach with Ctrl-].
  local remote; remote=$(echo "$cmd" | sed -n "s/.*'\(kvmctl [^']*\)'.*/\1/p")
  (sleep 1; printf 'echo CONSOLE-$((6*7))-OK\n'; sleep 2; printf '\035') | $remote > "$NODE/console.out" 2>&1 || true
  expect "the printed console command attaches, types and detaches" grep -aq "CONSOLE-42-OK" "$NODE/console.out"
  expect "it detached with Ctrl-]" grep -aq "Detached from" "$NODE/console.out"

  # ---- runtime memory: Ganeti balloons ---------------------------------------
  expect "gnt-instance modify -m 160 (balloon)" gnt-instance modify -m 160 "$INST_NAME"
  expect "kvmd ballooned to 160" test "$(kjson "['balloon']['target_mib']")" = 160

  # ---- hotplug: a NIC and a disk, in and out ---------------------------------
  expect "hot-add a NIC" gnt-instance modify --hotplug --net add:mode=bridged,link=$BRIDGE "$INST_NAME"
  expect "kvmd plugged the NIC" kinfo_has "hot-plugged as hotnic0"
  expect "hot-remove the NIC" gnt-instance modify --hotplug --net 1:remove "$INST_NAME"
  expect "kvmd unplugged it" kinfo_lacks hotnic0
  expect "hot-add a disk" gnt-instance modify --hotplug --disk add:size=1G "$INST_NAME"
  expect "kvmd plugged the disk" kinfo_has "hot-plugged as hotdisk0"
  expect "hot-remove the disk" gnt-instance modify --hotplug --disk 1:remove "$INST_NAME"
  expect "kvmd unplugged it" kinfo_lacks hotdisk0

  # ---- reboot, shutdown, startup ----------------------------------------------
  t0=$(now)
  expect "gnt-instance reboot" gnt-instance reboot "$INST_NAME"
  echo "instance_reboot_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  expect "running after the reboot" wait_status running 30
  t0=$(now)
  expect "gnt-instance shutdown" gnt-instance shutdown --timeout=10 "$INST_NAME"
  echo "instance_shutdown_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  expect "ADMIN_down in Ganeti" wait_status ADMIN_down 10
  expect "not running in kvmd" not_running
  t0=$(now)
  expect "gnt-instance startup" gnt-instance startup "$INST_NAME"
  echo "instance_startup_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  expect "running again" wait_status running 30

  # ---- the guest powers itself off: USER_down ----------------------------------
  for i in $(seq 1 240); do grep -aq GUEST-READY "$serial" 2>/dev/null && break; sleep 0.25; done
  python3 -c "
import socket, time
s = socket.socket(socket.AF_UNIX); s.connect('$NODE/kvmd-run/$INST_NAME/serial.sock')
s.sendall(b'poweroff -f\n'); time.sleep(0.5); s.close()"
  expect "a guest power-off is USER_down in gnt-instance list" wait_status USER_down 30
  expect "user-down in kvmd" test "$(kjson "['state']")" = user-down
  expect "startup after a user shutdown" gnt-instance startup "$INST_NAME"
  expect "running after it" wait_status running 30

  # ---- verify -----------------------------------------------------------------
  # ENODESSH (no sshd here) and ENODESETUP (no /proc/sysrq-trigger in this kernel) are the
  # sandbox's; anything about the hypervisor would be an error.
  local vrc=0
  gnt-cluster verify --ignore-errors=ENODESSH --ignore-errors=ENODESETUP > "$NODE/verify.txt" 2>&1 || vrc=$?
  cat "$NODE/verify.txt"
  expect "gnt-cluster verify passes" test "$vrc" = 0
  expect "no hypervisor error in verify" sh -c "! grep -i 'ERROR' '$NODE/verify.txt' | grep -qi 'hypervisor'"

  t0=$(now)
  expect "gnt-instance remove" gnt-instance remove -f "$INST_NAME"
  echo "instance_remove_s=$(elapsed "$t0" "$(now)")" >> "$NODE/timings.txt"
  expect "kvmd forgot it" sh -c "! '$KVMCTL_BIN' --socket /run/kvmd/kvmd.sock list --all | grep '$INST_NAME'"
  log "ALL CHECKS PASSED"
  # teardown trap does destroy + kill
}

###########################################################################
# Host part
###########################################################################
host() {
  [ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
  command -v gnt-cluster >/dev/null || { echo "ganeti not installed" >&2; exit 1; }

  # pick a TEST-NET that the host does not use
  local SUBNET=""
  for s in 192.0.2 198.51.100 203.0.113; do
    if ! ip -4 -o addr | grep -q " inet $s\." && ! ip -4 route | grep -q "^$s\."; then
      SUBNET=$s; break
    fi
  done
  [ -n "$SUBNET" ] || { echo "no free TEST-NET subnet" >&2; exit 1; }

  # fresh state tree
  rm -rf "$NODE"
  mkdir -p "$NODE"/{etc-ganeti,var-lib,var-log,run,srv}
  # /usr/lib/ganeti/default -> /etc/ganeti/lib and /etc/ganeti/share are
  # package symlinks that must exist inside the namespace too.
  cp -a /etc/ganeti/. "$NODE/etc-ganeti/"
  echo /srv/ganeti/file-storage > "$NODE/etc-ganeti/file-storage-paths"
  mkdir -p "$NODE/srv/ganeti/file-storage" "$NODE/srv/ganeti/shared-file-storage"
  cat > "$NODE/hosts" <<EOF
127.0.0.1 localhost
$SUBNET.10 $NODE_NAME node1
$SUBNET.100 $CLUSTER_NAME cluster1
EOF

  # minimal OS definition, OS API 20 (default search path /srv/ganeti/os)
  local os=$NODE/srv/ganeti/os/noop
  mkdir -p "$os"
  echo 20 > "$os/ganeti_api_version"
  echo default > "$os/variants.list"
  : > "$os/parameters.list"
  for s in create import export rename verify; do
    printf '#!/bin/sh\n# noop OS: accept everything\nexit 0\n' > "$os/$s"
    chmod 755 "$os/$s"
  done

  # Ganeti's hypervisor package with kvmd as its kvm type (what `kvmd-ganeti install`
  # does with dpkg-divert on a real node).
  cp -a "$GANETI_HV" "$NODE/hypervisor"
  rm -rf "$NODE/hypervisor/__pycache__"
  cp "$REPO/integrations/ganeti/hv_kvmd.py" "$NODE/hypervisor/hv_kvmd.py"
  "$REPO/integrations/ganeti/kvmd-ganeti" render "$GANETI_HV/__init__.py" "$NODE/hypervisor/__init__.py"
  echo "socket = /run/kvmd/kvmd.sock" > "$NODE/etc-ganeti/kvmd.conf"
  mkdir -p "$NODE/kvmd-run"
  # kvmd's own defaults for what Ganeti does not send (node verify checks its kernel).
  printf '[node]\nsocket = "/run/kvmd/kvmd.sock"\nrun_dir = "%s"\naccelerator = "tcg"\nstop_timeout = 10\n[node.hvparams]\nkernel_path = "%s/vmlinux"\ninitrd_path = "%s/initramfs.gz"\n' \
    "$NODE/kvmd-run" "$GUEST" "$GUEST" > "$NODE/kvmd.toml"
  # kvmctl for the console command Ganeti prints.
  PATH=$(dirname "$KVMCTL_BIN"):$PATH
  export PATH

  # Ganeti daemons that ran before this test (a host whose package install started them)
  # are not ours: the leak check leaves them out.
  local pre_ganeti; pre_ganeti=" $(ps -eo pid=,comm= | awk '$2 ~ /^ganeti-/ {print $1}' | tr '\n' ' ') "
  : > "$NODE/timings.txt"
  local t0; t0=$(now)
  set +e
  # unshare --fork ignores SIGINT/SIGTERM while it waits, so Ctrl-C still
  # lets the inner teardown run. --kill-child: if unshare itself is SIGKILLed,
  # the namespace's PID 1 gets SIGKILL, and with it the whole PID namespace
  # (daemons, qemu) -- the netns and its bridge/taps then disappear too.
  unshare --net --uts --mount --propagation private \
          --pid --mount-proc --fork --kill-child \
          -- bash "$(readlink -f "$0")" __inner "$SUBNET" 2>&1 | tee "$NODE/run.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "total_s=$(elapsed "$t0" "$(now)") rc=$rc" >> "$NODE/timings.txt"

  echo "---- timings ----"; cat "$NODE/timings.txt"
  # leak check on the host side (after a SIGKILL of the namespace the kernel
  # needs a moment to reap everything, hence the retry loop)
  local left i
  for i in $(seq 1 20); do
    left=$( (ps -eo pid=,comm= | awk -v pre="$pre_ganeti" '$2 ~ /^ganeti-/ && index(pre, " "$1" ") == 0'
             ps -eo pid=,args= | grep -F -- "--config $NODE/kvmd.toml" | grep -v grep
             ps -eo pid=,args= | grep -E '^ *[0-9]+ [^ ]*(qemu-system|kvm) .*-name inst1\.example\.test') || true)
    [ -z "$left" ] && break
    sleep 0.5
  done
  [ -z "$left" ] && echo "no Ganeti/qemu processes left" || { echo "LEFTOVER: $left"; rc=1; }
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "LEFTOVER bridge $BRIDGE"; rc=1; } || echo "no $BRIDGE on host"
  exit "$rc"
}

if [ "${1:-}" = __inner ]; then inner "$2"; else host; fi
