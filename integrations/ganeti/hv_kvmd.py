#
# kvmd under Ganeti: Ganeti's "kvm" hypervisor type, carried out by kvmd.
#
# Ganeti keeps its own KVMHypervisor class for everything that is about parameters
# (PARAMETERS, CheckParameterSyntax, ValidateParameters, VersionsSafeForMigration): kvmd
# speaks the same 65 hvparams. Every runtime method is replaced by a request on kvmd's
# control socket (JSON lines, docs/protocol.md), so the QEMU processes are kvmd's: it
# re-adopts them across its own restarts, detects user shutdowns (no ganeti-kvmd monitor is
# needed) and bounds every QMP command with a deadline.
#
# Instances are started with their whole definition (`start` with `definition` and
# `managed_by: ganeti`): kvmd's config file does not list them, and kvmd never autostarts
# or reloads them. Python 3 standard library only.
#
# The socket: $KVMD_SOCKET, else the `socket` line of /etc/ganeti/kvmd.conf, else
# /run/kvmd/kvmd.sock.

"""kvmd as Ganeti's KVM hypervisor."""

import json
import os
import socket
import time

from ganeti import constants
from ganeti import errors
from ganeti import objects
from ganeti.hypervisor import hv_base
from ganeti.hypervisor import hv_kvm

DEFAULT_SOCKET = "/run/kvmd/kvmd.sock"
CONF = "/etc/ganeti/kvmd.conf"
#: Deadline of a request that does not wait for a job (info, list, ...).
SHORT_TIMEOUT = 30.0
#: Deadline of a request that waits for its job (start, stop, migrate steps, ...).
JOB_TIMEOUT = 600.0
MANAGED_BY = "ganeti"


def SocketPath():
  """Where kvmd listens."""
  env = os.environ.get("KVMD_SOCKET")
  if env:
    return env
  try:
    with open(CONF) as conf:
      for line in conf:
        key, _, value = line.partition("=")
        if key.strip() == "socket" and value.strip():
          return value.strip().strip('"')
  except (IOError, OSError):
    pass
  return DEFAULT_SOCKET


class KvmdError(errors.HypervisorError):
  """kvmd refused or failed a request; code is kvmd's error code."""

  def __init__(self, code, message):
    errors.HypervisorError.__init__(self, "kvmd: %s (%s)" % (message, code))
    self.code = code


def Call(request, deadline=SHORT_TIMEOUT, **fields):
  """One request to kvmd; its result (a dict), or KvmdError."""
  msg = dict(fields)
  msg["request"] = request
  msg["id"] = 1
  timeout = deadline
  deadline = time.monotonic() + timeout
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  try:
    sock.settimeout(timeout)
    try:
      sock.connect(SocketPath())
    except (IOError, OSError) as err:
      raise KvmdError("unreachable",
                      "cannot reach kvmd on %s: %s" % (SocketPath(), err))
    sock.sendall((json.dumps(msg) + "\n").encode("utf-8"))
    buf = b""
    while not buf.endswith(b"\n"):
      left = deadline - time.monotonic()
      if left <= 0:
        raise KvmdError("timeout", "no answer to %s within %ds" %
                        (request, timeout))
      sock.settimeout(left)
      chunk = sock.recv(1 << 16)
      if not chunk:
        raise KvmdError("closed", "kvmd closed the connection")
      buf += chunk
  except socket.timeout:
    raise KvmdError("timeout", "no answer to %s within %ds" % (request, timeout))
  finally:
    sock.close()
  reply = json.loads(buf.decode("utf-8"))
  if not reply.get("ok"):
    err = reply.get("error") or {}
    raise KvmdError(err.get("code", "unknown"), err.get("message", "failed"))
  return reply.get("result") or {}


def _Info(name):
  """kvmd's VM info of name, or None when kvmd does not know it."""
  try:
    return Call("info", name=name)["instances"][0]
  except KvmdError as err:
    if err.code == "not_found":
      return None
    raise


#: kvmd states with a QEMU that Ganeti counts as running.
_RUNNING = frozenset(["starting", "running", "paused", "stopping", "unresponsive",
                      "migrating", "migrated", "incoming"])


def _HvInfo(vm):
  """Ganeti's (name, id, memory, vcpus, state, times) of a kvmd VM info, or None."""
  state = vm["state"]
  if state in _RUNNING and vm.get("pid"):
    balloon = vm.get("balloon") or {}
    memory = balloon.get("actual_mib") or vm["memory_mib"]
    cpu = (vm.get("cpu_time_ms") or 0) / 1000.0
    return (vm["name"], vm["pid"], memory, vm["vcpus"],
            hv_base.HvInstanceState.RUNNING, cpu)
  if state == "user-down":
    # The guest powered itself off: Ganeti's user shutdown.
    return (vm["name"], -1, 0, 0, hv_base.HvInstanceState.SHUTDOWN, 0)
  return None


def Definition(instance, block_devices):
  """The kvmd definition of a Ganeti instance: filled hvparams, beparams, NICs and the
  block devices Ganeti assembled ((disk, link_name, uri) tuples)."""
  be = instance.beparams
  disks = []
  for (disk, link_name, _) in block_devices:
    disks.append({
      "path": link_name,
      "format": "raw",
      "readonly": disk.mode == constants.DISK_RDONLY,
    })
  nics = []
  for nic in instance.nics:
    params = nic.nicparams or {}
    mode = params.get(constants.NIC_MODE, constants.NIC_MODE_BRIDGED)
    entry = {"mode": mode, "mac": nic.mac}
    if params.get(constants.NIC_LINK):
      entry["link"] = params[constants.NIC_LINK]
    if nic.ip:
      entry["ip"] = nic.ip
    nics.append(entry)
  hvparams = dict((k, v) for (k, v) in instance.hvparams.items()
                  if v is not None)
  definition = {
    "memory": be[constants.BE_MAXMEM],
    "min_memory": be[constants.BE_MINMEM],
    "vcpus": be[constants.BE_VCPUS],
    "disk": disks,
    "nic": nics,
    "hvparams": hvparams,
  }
  if instance.uuid:
    definition["uuid"] = instance.uuid
  if instance.network_port:
    definition["network_port"] = instance.network_port
  return definition


class KvmdHypervisor(hv_kvm.KVMHypervisor):
  """Ganeti's KVM hypervisor, run by kvmd."""

  def StartInstance(self, instance, block_devices, startup_paused):
    vm = _Info(instance.name)
    if vm is not None and _HvInfo(vm) is not None and \
        _HvInfo(vm)[4] == hv_base.HvInstanceState.RUNNING:
      raise errors.HypervisorError("Failed to start instance %s: already running"
                                   % instance.name)
    if vm is not None and vm["state"] in ("user-down", "crashed", "stopped", "moved"):
      # The last run's exit record goes, as Ganeti's CleanupInstance would; "moved": this
      # node migrated the VM away earlier (a failover brings it back here).
      Call("cleanup", name=instance.name)
    Call("start", deadline=JOB_TIMEOUT, name=instance.name,
         definition=Definition(instance, block_devices),
         managed_by=MANAGED_BY, paused=bool(startup_paused))

  def StopInstance(self, instance, force=False, retry=False, name=None,
                   timeout=None):
    name = name or instance.name
    fields = {"name": name, "force": bool(force)}
    if timeout:
      fields["timeout"] = int(timeout)
    try:
      Call("stop", deadline=JOB_TIMEOUT, **fields)
    except KvmdError as err:
      # Ganeti stops again and again until the instance is gone: gone is done.
      if err.code not in ("not_found",):
        raise
    # A user shutdown stays visible (SHUTDOWN) until it is stopped: as Ganeti's own code
    # clears its shutdown marker, clear kvmd's record, so Ganeti sees it gone.
    vm = _Info(name)
    if vm is not None and vm["state"] == "user-down":
      Call("cleanup", name=name)
    return True

  def CleanupInstance(self, instance_name):
    try:
      Call("cleanup", name=instance_name)
    except KvmdError as err:
      if err.code not in ("not_found",):
        raise

  def RebootInstance(self, instance):
    Call("reboot", deadline=JOB_TIMEOUT, name=instance.name)

  def ListInstances(self, hvparams=None):
    vms = Call("list")["instances"]
    return [vm["name"] for vm in vms if vm.get("pid")]

  def GetInstanceInfo(self, instance_name, hvparams=None):
    vm = _Info(instance_name)
    return None if vm is None else _HvInfo(vm)

  def GetAllInstancesInfo(self, hvparams=None):
    vms = Call("list", all=True)["instances"]
    return [info for info in map(_HvInfo, vms) if info is not None]

  @classmethod
  def GetInstanceConsole(cls, instance, primary_node, node_group,
                         hvparams, beparams):
    if hvparams[constants.HV_SERIAL_CONSOLE]:
      ndparams = node_group.FillND(primary_node)
      cmd = ["kvmctl", "--socket", SocketPath(), "console", instance.name]
      return objects.InstanceConsole(instance=instance.name,
                                     kind=constants.CONS_SSH,
                                     host=primary_node.name,
                                     port=ndparams.get(constants.ND_SSH_PORT),
                                     user=constants.SSH_CONSOLE_USER,
                                     command=cmd)
    return super(KvmdHypervisor, cls).GetInstanceConsole(
      instance, primary_node, node_group, hvparams, beparams)

  def BalloonInstanceMemory(self, instance, mem):
    Call("balloon", deadline=JOB_TIMEOUT, name=instance.name, mib=int(mem))

  def GetNodeInfo(self, hvparams=None):
    node = Call("node-info")["node"]
    result = {
      "memory_total": node["memory_total_mib"],
      "memory_free": node["memory_free_mib"],
      "memory_dom0": node["memory_node_mib"],
      "cpu_total": node["cpus"],
      "cpu_nodes": node["numa_nodes"],
      "cpu_sockets": node["sockets"],
      "cpu_dom0": node["cpus"],
    }
    if node.get("qemu_version"):
      result["hv_version"] = tuple(node["qemu_version"])
    return result

  def Verify(self, hvparams=None):
    try:
      findings = Call("node-verify")["findings"]
    except KvmdError as err:
      return str(err)
    bad = ["%s: %s" % (f["check"], f["detail"]) for f in findings
           if f["severity"] == "error"]
    return "; ".join(bad) if bad else None

  # --- hotplug -----------------------------------------------------------------------

  def HotplugSupported(self, instance):
    vm = _Info(instance.name)
    if vm is None or vm["state"] not in ("running", "paused"):
      raise errors.HotplugError("Instance %s is not running under kvmd" %
                                instance.name)

  def VerifyHotplugSupport(self, instance, action, dev_type):
    if dev_type not in (constants.HOTPLUG_TARGET_DISK,
                        constants.HOTPLUG_TARGET_NIC):
      raise errors.HotplugError("kvmd cannot hot-plug a %s" % dev_type)
    if action == constants.HOTPLUG_ACTION_MODIFY and \
        dev_type != constants.HOTPLUG_TARGET_NIC:
      raise errors.HotplugError("Only a NIC's link changes live; a disk needs"
                                " a re-plug")

  def _PluggedId(self, instance, dev_type, device):
    """kvmd's id of a plugged Ganeti device: a NIC by its MAC, a disk by its path."""
    hw = (_Info(instance.name) or {}).get("hardware") or {}
    if dev_type == constants.HOTPLUG_TARGET_NIC:
      for nic in hw.get("nics", []):
        if nic.get("id") and nic["mac"] == device.mac:
          return nic["id"]
    else:
      # A plugged disk by its path (the link Ganeti made for it) when Ganeti knows it;
      # with one plugged disk, that one.
      wanted = getattr(device, "dev_path", None) or ""
      plugged = [d for d in hw.get("disks", []) if d.get("id")]
      for disk in plugged:
        if disk["path"] == wanted or os.path.realpath(disk["path"]) == \
            os.path.realpath(wanted or "/nonexistent"):
          return disk["id"]
      if len(plugged) == 1:
        return plugged[0]["id"]
    raise errors.HotplugError("kvmd has no plugged %s for this device" %
                              dev_type)

  def HotAddDevice(self, instance, dev_type, device, extra, seq):
    if dev_type == constants.HOTPLUG_TARGET_DISK:
      # extra is (the disk's link, its drive URI), as Ganeti's backend assembled it.
      link = extra[0] if isinstance(extra, (list, tuple)) else extra
      Call("hotplug-add", deadline=JOB_TIMEOUT, name=instance.name, kind="disk",
           path=link, format="raw",
           readonly=device.mode == constants.DISK_RDONLY)
    else:
      params = device.nicparams or {}
      fields = {"mac": device.mac,
                "mode": params.get(constants.NIC_MODE, constants.NIC_MODE_BRIDGED)}
      if params.get(constants.NIC_LINK):
        fields["link"] = params[constants.NIC_LINK]
      Call("hotplug-add", deadline=JOB_TIMEOUT, name=instance.name, kind="nic",
           **fields)

  def HotDelDevice(self, instance, dev_type, device, _, seq):
    Call("hotplug-del", deadline=JOB_TIMEOUT, name=instance.name,
         device=self._PluggedId(instance, dev_type, device))

  def HotModDevice(self, instance, dev_type, device, _, seq):
    params = device.nicparams or {}
    link_up = params.get("link_state", "up") != "down"
    Call("hotplug-mod", deadline=JOB_TIMEOUT, name=instance.name,
         device=self._PluggedId(instance, dev_type, device),
         link="up" if link_up else "down")

  # --- migration -----------------------------------------------------------------------

  def MigrationInfo(self, instance):
    return Call("migration-info", name=instance.name)["info"]

  def AcceptInstance(self, instance, info, target):
    port = instance.hvparams[constants.HV_MIGRATION_PORT]
    Call("accept", deadline=JOB_TIMEOUT, name=instance.name, info=info,
         listen="%s:%d" % (target, port))

  def MigrateInstance(self, cluster_name, instance, target, live_migration):
    port = instance.hvparams[constants.HV_MIGRATION_PORT]
    Call("migrate", name=instance.name, target="%s:%d" % (target, port),
         live=bool(live_migration), wait=False)

  def GetMigrationStatus(self, instance):
    m = Call("migration-status", name=instance.name)["migration"]
    status = m["status"]
    if status == "unknown":
      status = constants.HV_MIGRATION_FAILED
    elif status not in (constants.HV_MIGRATION_COMPLETED, constants.HV_MIGRATION_FAILED,
                        constants.HV_MIGRATION_CANCELLED, "postcopy-active"):
      # setup, pre-switchover, device, kvmd's recovering/settling: still under way,
      # which Ganeti's poll loop knows as "active".
      status = constants.HV_MIGRATION_ACTIVE
    result = objects.MigrationStatus(status=status)
    result.transferred_ram = m.get("transferred", 0)
    result.total_ram = m.get("total", 0)
    return result

  def FinalizeMigrationSource(self, instance, success, live):
    Call("finalize-src", deadline=JOB_TIMEOUT, name=instance.name,
         success=bool(success))

  def FinalizeMigrationDst(self, instance, info, success):
    Call("finalize-dst", deadline=JOB_TIMEOUT, name=instance.name,
         success=bool(success))
