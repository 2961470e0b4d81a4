#!/bin/bash
# two-node.sh - a REAL two-node Ganeti 3.0 cluster on one host, kvm type = kvmd.
#
# Usage (as root): KVMD_BIN=... KVMCTL_BIN=... [LAB=/tmp/ganeti-lab2] ./two-node.sh
#
# Process layout:
#   host:  this script -> unshare --pid --mount (OUTER, PID 1 of a private PID ns: the kill
#          switch; it shares the host's network, so it never creates links itself)
#   OUTER: starts NODE1 and NODE2, each `unshare --net --uts --mount --pid --mount-proc`:
#          own hostname, own /run /etc/ganeti /var/lib/ganeti /var/log/ganeti /srv /etc/hosts
#          /root/.ssh /etc/ssh, own bridge gnt-br0, own kvmd, own sshd.
#          The two bridges are joined by one veth pair (created in node1's netns with its
#          peer put straight into node2's netns). OUTER runs every Ganeti/kvmctl command
#          through nsenter into the right node.
#   Shared: $LAB/shared is bind-mounted at /srv/ganeti/shared-file-storage in both nodes
#          (the sharedfile disk template).
set -euo pipefail

LAB=${LAB:?the lab directory}
SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$(readlink -f "$0")")/../.." && pwd)
KVMD_BIN=${KVMD_BIN:?kvmd binary}
KVMCTL_BIN=${KVMCTL_BIN:?kvmctl binary}
GANETI_HV=/usr/share/ganeti/3.0/ganeti/hypervisor
CLUSTER_NAME=cluster1.example.test
INST=inst1.example.test
BRIDGE=gnt-br0
GUEST=/var/lib/kvmd/guest
HV_PY=$REPO/integrations/ganeti/hv_kvmd.py

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[$(date +%T)] $*"; }
nodename() { echo "node$1.example.test"; }

###########################################################################
# NODE: PID 1 of a node's pid/net/uts/mount namespaces.
###########################################################################
node_main() {
  N=$1 SUBNET=$2        # globals: the EXIT trap runs after this function returned
  D=$LAB/node$N IP=$SUBNET.1$N
  exec > "$D/node.log" 2>&1
  node_teardown() {
    set +e
    log "node$N teardown"
    [ -f /run/sshd.pid ] && kill "$(cat /run/sshd.pid)"
    /usr/lib/ganeti/daemon-util stop-all >/dev/null 2>&1
    local p
    for p in $(ps -eo pid= | awk '$1 != 1'); do
      [ "$p" = "$BASHPID" ] || kill -TERM "$p" 2>/dev/null
    done
    sleep 1
    for p in $(ps -eo pid= | awk '$1 != 1'); do
      [ "$p" = "$BASHPID" ] || kill -KILL "$p" 2>/dev/null
    done
    log "node$N processes left: $(me=$BASHPID; ps -eo pid=,comm= | awk -v me="$me" '$1!=1 && $1!=me && $2!="ps" && $2!="awk" && $2!="tr"' | tr '\n' ' ')"
  }
  trap node_teardown EXIT
  mount -n --make-rprivate /
  mount -n --bind "$D/run"        /run
  mount -n --bind "$D/etc-ganeti" /etc/ganeti
  mount -n --bind "$D/var-lib"    /var/lib/ganeti
  mount -n --bind "$D/var-log"    /var/log/ganeti
  mount -n --bind "$D/srv"        /srv
  mount -n --bind "$LAB/shared"   /srv/ganeti/shared-file-storage
  mount -n --bind "$D/hosts"      /etc/hosts
  mount -n --bind "$D/etc-ssh"    /etc/ssh
  # the whole of /root: a mkdir of /root/.ssh would land on the host's disk if it is missing
  mount -n --bind "$D/root"       /root
  mount -n -t sysfs sysfs /sys
  mount -n --bind "$LAB/hypervisor" "$GANETI_HV"
  mkdir -p /run/lock /run/ganeti /run/kvmd /run/sshd
  hostname "$(nodename "$N")"
  ip link set lo up
  ip link add "$BRIDGE" type bridge
  # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, which changes
  # when a QEMU tap comes or goes, and the other node's ARP entry goes stale (seen: ~10 s
  # of "Failed to connect to ...:1811" from the master after a target QEMU died).
  ip link set "$BRIDGE" address "02:00:00:00:00:0$N"
  ip addr add "$IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  "$KVMD_BIN" --config "$D/kvmd.toml" --log kvmd=info > "$D/kvmd.log" 2>&1 &
  local i
  for i in $(seq 1 100); do
    "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  /usr/sbin/sshd -E "$D/sshd.log"
  log "node$N up: $(hostname) ip=$IP kvmd=$("$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock ping 2>&1)"
  touch "$D/ready"
  while [ ! -e "$D/stop" ]; do sleep 0.5 & wait $!; done
}

###########################################################################
# OUTER: PID 1 of the private PID namespace; drives both nodes.
###########################################################################
outer_main() {
  local SUBNET=$1
  IP1=$SUBNET.11 IP2=$SUBNET.12   # globals (the EXIT trap uses them)
  N1N=$(nodename 1); N2N=$(nodename 2)
  T=$LAB/timings.txt
  declare -gA NPID      # global: the EXIT trap runs after outer_main returned
  RESULTS=()
  res() { RESULTS+=("$1"); log "RESULT $1"; }

  start_node() {
    unshare --net --uts --mount --propagation private --pid --fork --mount-proc \
      -- bash "$SELF" __node "$1" "$SUBNET" &
    local u=$! i c=""
    for i in $(seq 1 100); do
      c=$(ps -o pid= --ppid "$u" | tr -d ' ' | head -1)
      [ -n "$c" ] && break; sleep 0.1
    done
    NPID[$1]=$c
  }
  # run a command in node N (all its namespaces, fresh process there)
  on() { local n=$1; shift; nsenter -t "${NPID[$n]}" -m -u -n -p -- "$@"; }
  K() { local n=$1; shift; on "$n" "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock "$@"; }
  G() { on 1 "$@"; }   # Ganeti commands on the master
  running_on() { # which node's kvmd runs the instance: "1", "2", "1 2" or ""
    local n out=""
    for n in 1 2; do
      K "$n" list 2>/dev/null | grep -q "$INST" && out="$out $n"
    done
    echo "${out# }"
  }
  show() { local n; for n in 1 2; do log "kvmd node$n list:"; K "$n" list 2>&1 | sed 's/^/    /'; done; true; }
  primary() { G gnt-instance list --no-headers -o pnode "$INST" | tr -d ' '; }
  gstatus() { G gnt-instance list --no-headers -o status "$INST" | tr -d ' '; }
  timed() { # label, command...
    local label=$1; shift
    local t0 rc=0; t0=$(now)
    "$@" || rc=$?
    echo "${label}_s=$(elapsed "$t0" "$(now)") rc=$rc" >> "$T"
    log "$label took $(elapsed "$t0" "$(now)") s rc=$rc"
    return $rc
  }
  wait_booted() { # node
    local s=$LAB/node$1/kvmd-run/$INST/serial.log i
    for i in $(seq 1 160); do grep -aq GUEST-READY "$s" 2>/dev/null && return 0; sleep 0.25; done
    return 1
  }

  outer_teardown() {
    local rc=$?
    set +e
    log "outer teardown (rc=$rc)"
    if [ -n "${NPID[1]:-}" ] && [ -f "$LAB/node1/var-lib/config.data" ]; then
      G gnt-instance remove -f --shutdown-timeout=0 "$INST" >/dev/null 2>&1
      G gnt-node remove "$N2N" >> "$LAB/teardown.log" 2>&1
      timed cluster_destroy G gnt-cluster destroy --yes-do-it >> "$LAB/teardown.log" 2>&1
    fi
    touch "$LAB/node1/stop" "$LAB/node2/stop"
    wait
    log "outer: nodes exited"
    printf '%s\n' "${RESULTS[@]}" > "$LAB/results.txt"
    exit $rc
  }
  trap outer_teardown EXIT

  start_node 1; start_node 2
  local i
  for i in $(seq 1 100); do [ -e "$LAB/node1/ready" ] && [ -e "$LAB/node2/ready" ] && break; sleep 0.2; done
  [ -e "$LAB/node1/ready" ] && [ -e "$LAB/node2/ready" ] || { log "nodes not ready"; exit 1; }
  log "node pids (outer ns): node1=${NPID[1]} node2=${NPID[2]}"
  # veth: made in node1's netns, its peer straight into node2's (never in the host's)
  nsenter -t "${NPID[1]}" -n -- ip link add gnt-va type veth peer name gnt-vb netns "${NPID[2]}"
  on 1 ip link set gnt-va master "$BRIDGE" up
  on 2 ip link set gnt-vb master "$BRIDGE" up
  on 1 timeout 3 bash -c "echo > /dev/tcp/$IP2/22" && log "node1 -> node2:22 reachable"
  on 1 ssh -oBatchMode=yes -oStrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null "$N2N" hostname \
    && res "ssh node1->node2 as root: ok"

  # ---- 1. cluster init + node add ------------------------------------------
  local HV="kvm:kvm_flag=disabled,kvm_path=/usr/bin/qemu-system-x86_64,vnc_bind_address="
  HV="$HV,kernel_path=$GUEST/vmlinux,initrd_path=$GUEST/initramfs.gz"
  HV="$HV,root_path=/dev/ram0,serial_console=true,user_shutdown=true"
  timed cluster_init G gnt-cluster init \
    --no-ssh-init --no-etc-hosts --user-shutdown=true \
    --enabled-hypervisors=kvm -H "$HV" \
    --enabled-disk-templates=sharedfile,file \
    --file-storage-dir=/srv/ganeti/file-storage \
    --shared-file-storage-dir=/srv/ganeti/shared-file-storage \
    --master-netdev="$BRIDGE" \
    --nic-parameters="mode=bridged,link=$BRIDGE" \
    "$CLUSTER_NAME" && res "1a cluster init: ok" || { res "1a cluster init: FAILED"; exit 1; }
  timed node_add G gnt-node add "$N2N" && res "1b node add: ok" || { res "1b node add: FAILED"; exit 1; }
  G gnt-node list

  # ---- 2. instance add on node1 ----------------------------------------------
  timed instance_add G gnt-instance add -t sharedfile -o noop+default \
    --disk 0:size=1G -B maxmem=192,minmem=128 --no-name-check --no-ip-check \
    -n "$N1N" "$INST" || { res "2 instance add: FAILED"; exit 1; }
  show
  [ "$(running_on)" = 1 ] && wait_booted 1 && res "2 instance add: ok (node1's kvmd, guest booted)" \
    || res "2 instance add: runs on '$(running_on)'"
  K 1 info "$INST" | grep -i "managed by" || true

  # ---- 3. live migrate to node2, non-live back ---------------------------------
  timed migrate_live G gnt-instance migrate -f -n "$N2N" "$INST" \
    && res "3a migrate live: ganeti ok" || res "3a migrate live: FAILED"
  show
  log "primary=$(primary) status=$(gstatus) running_on=$(running_on)"
  [ "$(running_on)" = 2 ] && [ "$(primary)" = "$N2N" ] && res "3a after live migrate: only node2 runs it" \
    || res "3a after live migrate: running_on='$(running_on)' primary=$(primary)"
  K 2 info "$INST" | grep -i "managed by" || true
  timed migrate_nonlive G gnt-instance migrate -f --non-live -n "$N1N" "$INST" \
    && res "3b migrate non-live: ganeti ok" || res "3b migrate non-live: FAILED"
  show
  [ "$(running_on)" = 1 ] && [ "$(primary)" = "$N1N" ] && res "3b after non-live migrate: only node1 runs it" \
    || res "3b after non-live: running_on='$(running_on)' primary=$(primary)"

  # ---- 4. a failed migration, then --cleanup ---------------------------------------
  # Kill the target's (node2's) QEMU as soon as it is listening for the migration.
  ( for i in $(seq 1 400); do
      p=$(K 2 --json info "$INST" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['result']['instances'][0].get('pid') or '')" 2>/dev/null || true)
      if [ -n "$p" ]; then on 2 kill -9 "$p"; echo "killed node2 qemu pid $p (node2 ns)"; break; fi
      sleep 0.02
    done ) > "$LAB/kill.log" 2>&1 &
  local killer=$!
  local frc=0
  timed migrate_failing G gnt-instance migrate -f -n "$N2N" "$INST" > "$LAB/migrate-fail.log" 2>&1 || frc=$?
  wait $killer; cat "$LAB/kill.log"; tail -5 "$LAB/migrate-fail.log"
  [ $frc != 0 ] && res "4a migration failed on purpose (rc=$frc)" || res "4a migration did NOT fail (killer: $(cat "$LAB/kill.log"))"
  show
  log "after failure: primary=$(primary) status=$(gstatus) running_on=$(running_on)"
  timed migrate_cleanup G gnt-instance migrate -f --cleanup "$INST" > "$LAB/migrate-cleanup.log" 2>&1 \
    && res "4b migrate --cleanup: ok" || res "4b migrate --cleanup: FAILED ($(tail -1 "$LAB/migrate-cleanup.log"))"
  cat "$LAB/migrate-cleanup.log"
  show
  local ro; ro=$(running_on)
  [ "$ro" = 1 ] || [ "$ro" = 2 ] && res "4c after cleanup runs on exactly one node: node$ro, primary=$(primary) status=$(gstatus)" \
    || res "4c after cleanup: running_on='$ro'"
  # Not tried: stopping node2's kvmd during the migration. Step 6 below gives --cleanup a
  # second case: the VM found running on the node that is not Ganeti's primary.

  # ---- 5. failover ---------------------------------------------------------------
  local other=$N2N on_n=2
  [ "$(primary)" = "$N2N" ] && { other=$N1N; on_n=1; }
  timed failover G gnt-instance failover -f -n "$other" "$INST" \
    && res "5 failover: ganeti ok" || res "5 failover: FAILED"
  show
  [ "$(running_on)" = "$on_n" ] && [ "$(primary)" = "$other" ] && res "5 after failover: only node$on_n runs it" \
    || res "5 after failover: running_on='$(running_on)' primary=$(primary)"
  wait_booted "$on_n" || true

  # ---- 6. direct kvmctl migrate between the two kvmds, and back ----------------------
  local src=$on_n dst=$(( 3 - on_n ))
  local dstip=$SUBNET.1$dst srcip=$SUBNET.1$src
  # Ganeti's disk path is a per-node symlink (/var/run/ganeti/instance-disks/NAME:0) that
  # Ganeti makes only on the nodes it assembled the disks on; kvmd's accept checks it exists.
  disklink() { # from to
    local l=/var/run/ganeti/instance-disks/$INST:0 t
    t=$(on "$1" readlink "$l")
    on "$2" mkdir -p /var/run/ganeti/instance-disks
    on "$2" ln -sfn "$t" "$l"
    log "disk link on node$2: $l -> $t"
  }
  disklink "$src" "$dst"
  timed kvmctl_migrate_there on "$src" "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock migrate "$INST" \
      --to "$LAB/node$dst/run/kvmd/kvmd.sock" --listen "$dstip:8111" > "$LAB/kvmctl-migrate-1.log" 2>&1 \
    && res "6a kvmctl migrate node$src->node$dst: ok" || res "6a kvmctl migrate node$src->node$dst: FAILED"
  tr '\r' '\n' < "$LAB/kvmctl-migrate-1.log" | grep -v '^\[' || true
  show
  [ "$(running_on)" = "$dst" ] && res "6a runs only on node$dst now (Ganeti's primary still $(primary))" \
    || res "6a after kvmctl migrate: running_on='$(running_on)'"
  # Ganeti's answer to a VM found on the other node: migrate --cleanup adopts it there.
  timed cleanup_after_kvmctl G gnt-instance migrate -f --cleanup -n "$(nodename $dst)" "$INST" > "$LAB/cleanup-2.log" 2>&1 \
    && res "6b migrate --cleanup after the kvmctl migration: ok" || res "6b cleanup after kvmctl: FAILED ($(tail -1 "$LAB/cleanup-2.log"))"
  cat "$LAB/cleanup-2.log"
  [ "$(running_on)" = "$dst" ] && [ "$(primary)" = "$(nodename $dst)" ] && res "6b Ganeti's primary is now node$dst, where it runs" \
    || res "6b after cleanup: running_on='$(running_on)' primary=$(primary) status=$(gstatus)"
  disklink "$dst" "$src"
  timed kvmctl_migrate_back on "$dst" "$KVMCTL_BIN" --socket /run/kvmd/kvmd.sock migrate "$INST" \
      --to "$LAB/node$src/run/kvmd/kvmd.sock" --listen "$srcip:8112" > "$LAB/kvmctl-migrate-2.log" 2>&1 \
    && res "6c kvmctl migrate back node$dst->node$src: ok" || res "6c kvmctl migrate back: FAILED"
  tr '\r' '\n' < "$LAB/kvmctl-migrate-2.log" | grep -v '^\[' || true
  timed cleanup_after_kvmctl_back G gnt-instance migrate -f --cleanup -n "$(nodename $src)" "$INST" > "$LAB/cleanup-3.log" 2>&1 || true
  show
  [ "$(running_on)" = "$src" ] && [ "$(primary)" = "$(nodename $src)" ] && res "6c back on node$src, Ganeti agrees (status=$(gstatus))" \
    || res "6c after round trip: running_on='$(running_on)' primary=$(primary) status=$(gstatus)"
  K "$src" info "$INST" | grep -i "managed by" || true
  G gnt-cluster verify --ignore-errors=ENODESETUP > "$LAB/verify.txt" 2>&1 \
    && res "verify: ok" || res "verify: rc!=0 (see verify.txt)"
  log "ALL STEPS DONE"
}

###########################################################################
# Host part
###########################################################################
host_main() {
  [ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
  local SUBNET="" s
  for s in 192.0.2 198.51.100 203.0.113; do
    if ! ip -4 -o addr | grep -q " inet $s\." && ! ip -4 route | grep -q "$s\."; then
      SUBNET=$s; break
    fi
  done
  [ -n "$SUBNET" ] || { echo "no free TEST-NET subnet" >&2; exit 1; }
  mkdir -p "$LAB"
  rm -rf "$LAB"/node1 "$LAB"/node2 "$LAB"/shared "$LAB"/hypervisor "$LAB"/keys
  rm -f "$LAB"/timings.txt "$LAB"/results.txt "$LAB"/*.log "$LAB"/verify.txt
  mkdir -p "$LAB/shared" "$LAB/keys"
  # one ssh host key set (Ganeti gives all nodes the same host key) and one root key
  ssh-keygen -q -t rsa -b 2048 -N '' -f "$LAB/keys/ssh_host_rsa_key" -C cluster-host
  ssh-keygen -q -t ed25519 -N '' -f "$LAB/keys/ssh_host_ed25519_key" -C cluster-host
  ssh-keygen -q -t rsa -b 2048 -N '' -f "$LAB/keys/id_rsa" -C root@lab
  # the hypervisor package with kvmd as the kvm type
  cp -a "$GANETI_HV" "$LAB/hypervisor"
  rm -rf "$LAB/hypervisor/__pycache__"
  cp "$HV_PY" "$LAB/hypervisor/hv_kvmd.py"
  "$REPO/integrations/ganeti/kvmd-ganeti" render "$GANETI_HV/__init__.py" "$LAB/hypervisor/__init__.py"
  local N D
  for N in 1 2; do
    D=$LAB/node$N
    mkdir -p "$D"/{etc-ganeti,var-lib,var-log,run,srv,root/.ssh,kvmd-run}
    cp -a /etc/ganeti/. "$D/etc-ganeti/"
    printf '/srv/ganeti/file-storage\n/srv/ganeti/shared-file-storage\n' > "$D/etc-ganeti/file-storage-paths"
    echo "socket = /run/kvmd/kvmd.sock" > "$D/etc-ganeti/kvmd.conf"
    mkdir -p "$D/srv/ganeti/file-storage" "$D/srv/ganeti/shared-file-storage"
    cat > "$D/hosts" <<EOF
127.0.0.1 localhost
$SUBNET.11 node1.example.test node1
$SUBNET.12 node2.example.test node2
$SUBNET.100 $CLUSTER_NAME cluster1
EOF
    local os=$D/srv/ganeti/os/noop
    mkdir -p "$os"; echo 20 > "$os/ganeti_api_version"; echo default > "$os/variants.list"
    : > "$os/parameters.list"
    for s in create import export rename verify; do
      printf '#!/bin/sh\nexit 0\n' > "$os/$s"; chmod 755 "$os/$s"
    done
    # /etc/ssh: the host's config files, the lab's host keys, sshd on the node's IP only
    mkdir -p "$D/etc-ssh"
    cp -a /etc/ssh/ssh_config /etc/ssh/ssh_config.d /etc/ssh/moduli "$D/etc-ssh/"
    cp "$LAB"/keys/ssh_host_* "$D/etc-ssh/"
    cat > "$D/etc-ssh/sshd_config" <<EOF
ListenAddress $SUBNET.1$N
PermitRootLogin prohibit-password
UsePAM no
PidFile /run/sshd.pid
HostKey /etc/ssh/ssh_host_rsa_key
HostKey /etc/ssh/ssh_host_ed25519_key
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    cp "$LAB/keys/id_rsa" "$LAB/keys/id_rsa.pub" "$D/root/.ssh/"
    cp "$LAB/keys/id_rsa.pub" "$D/root/.ssh/authorized_keys"
    chmod 700 "$D/root" "$D/root/.ssh"; chmod 600 "$D/root/.ssh/id_rsa" "$D/root/.ssh/authorized_keys"
    printf '[node]\nsocket = "/run/kvmd/kvmd.sock"\nrun_dir = "%s"\naccelerator = "tcg"\nstop_timeout = 10\n[node.hvparams]\nkernel_path = "%s/vmlinux"\ninitrd_path = "%s/initramfs.gz"\n' \
      "$D/kvmd-run" "$GUEST" "$GUEST" > "$D/kvmd.toml"
  done
  PATH=$(dirname "$KVMCTL_BIN"):$PATH; export PATH
  export LAB REPO KVMD_BIN KVMCTL_BIN
  # Ganeti daemons that ran before this test (a host whose package install started them)
  # are not ours: the leak check leaves them out.
  local pre_ganeti; pre_ganeti=" $(ps -eo pid=,comm= | awk '$2 ~ /^ganeti-/ {print $1}' | tr '\n' ' ') "
  local had_root_ssh=0; [ -e /root/.ssh ] && had_root_ssh=1
  local t0 rc; t0=$(now)
  set +e
  unshare --pid --fork --kill-child --mount-proc --mount --propagation private \
    -- bash "$SELF" __outer "$SUBNET" 2>&1 | tee "$LAB/run.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "total_s=$(elapsed "$t0" "$(now)") rc=$rc" >> "$LAB/timings.txt"
  echo "---- results ----"; cat "$LAB/results.txt" 2>/dev/null || echo "(no results.txt)"
  echo "---- timings ----"; cat "$LAB/timings.txt" || true
  # leak check on the host
  local left i
  for i in $(seq 1 20); do
    left=$( (ps -eo pid=,comm= | awk -v pre="$pre_ganeti" '$2 ~ /^ganeti-/ && index(pre, " "$1" ") == 0' ; ps -eo pid=,args= | grep -E "kvmd --config $LAB|sshd -E $LAB|qemu-system.*$INST" | grep -v grep) || true)
    [ -z "$left" ] && break; sleep 0.5
  done
  [ -z "$left" ] && echo "no processes left" || { echo "LEFTOVER processes: $left"; rc=1; }
  if grep -q "$LAB" /proc/mounts; then echo "LEFTOVER mounts"; grep "$LAB" /proc/mounts; rc=1; else echo "no mounts left"; fi
  if ip -o link | grep -qE "gnt-br0|gnt-va|gnt-vb|tap"; then echo "LEFTOVER links"; rc=1; else echo "no links left"; fi
  if [ -e /root/.ssh ] && [ "$had_root_ssh" = 0 ]; then echo "LEFTOVER /root/.ssh"; rc=1; fi
  ls /run/ganeti /run/kvmd/kvmd.sock 2>/dev/null | grep -q . && echo "NOTE: host has /run/ganeti or /run/kvmd/kvmd.sock (check: not ours?)"
  mkdir -p "$LAB/logs"
  for N in 1 2; do
    rm -rf "$LAB/logs/node$N"; mkdir -p "$LAB/logs/node$N"
    cp -a "$LAB/node$N"/{node.log,kvmd.log,sshd.log,var-log} "$LAB/logs/node$N/" 2>/dev/null || true
    find "$LAB/node$N/kvmd-run" -name 'serial.log' -exec cp --parents {} "$LAB/logs/node$N/" \; 2>/dev/null || true
  done
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$LAB"/node1 "$LAB"/node2 "$LAB"/shared "$LAB"/hypervisor "$LAB"/keys
    echo "state dirs removed (logs kept in $LAB)"
  fi
  exit "$rc"
}

case "${1:-}" in
  __node) node_main "$2" "$3" ;;
  __outer) outer_main "$2" ;;
  *) host_main ;;
esac
