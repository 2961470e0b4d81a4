#!/usr/bin/env python3
"""Print the QEMU argv that Ganeti 3.0.2's KVMHypervisor would run for a case.

Usage:
    python3 ganeti_argv.py < CASE.json          # case on stdin
    python3 ganeti_argv.py CASE.json            # or as a file argument
    python3 ganeti_argv.py --defaults           # Ganeti's KVM hvparam defaults

Output (stdout, JSON):
    {"argv": [...], "ganeti_version": "3.0.2", "log": [...], "commands": [...]}
or, when Ganeti itself refuses the case (exit status 2):
    {"argv": null, "error": "...", "stage": "...", ...}

Nothing here builds QEMU arguments. The argv comes from Ganeti's own code,
run along its real path (the one `gnt-instance start` takes):

  master side   utils.ForceDictType + Cluster.SimpleFillHV + CheckParamsNotGlobal
                + KVMHypervisor.CheckParameterSyntax + NIC.CheckParameterSyntax
                (cmdlib/instance_create.py, instance_set_params.py)
  RPC encoding  rpc/node.py _InstDict: Cluster.FillHV/FillBE, NIC params filled
                from cluster defaults, disks annotated (AnnotateDiskParams),
                then objects.Instance.FromDict as noded does
  node side     KVMHypervisor.ValidateParameters (CheckHVParams RPC), then
                backend.StartInstance's block device list
                (disk, backend._GetBlockDevSymlinkPath(name, idx), uri=None)
                and KVMHypervisor.StartInstance(instance, block_devices,
                startup_paused) = _GenerateKVMRuntime + _SaveKVMRuntime +
                _ExecuteKVMRuntime.

Everything that would touch the host is replaced (see MOCKS below); the final
QEMU command is captured in the utils.RunCmd stand-in instead of being run,
and the start is then aborted (nothing after the launch changes the argv).

Ganeti is imported from /usr/share/ganeti/3.0 (Debian package ganeti-3.0).
Its dependencies are Debian python3-* packages, so when this file is run by
another interpreter (pyenv, venv) it re-executes itself with /usr/bin/python3.
"""

import os
import sys

GANETI_LIB = os.environ.get("GANETI_LIB", "/usr/share/ganeti/3.0")
SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

# Where Ganeti's KVM run dir really is; argv paths are reported relative to
# this, although the files are written under a temporary directory.
GANETI_KVM_ROOT = "/var/run/ganeti/kvm-hypervisor"
FIRST_FAKE_FD = 10


def _bootstrap():
  sys.path.insert(0, GANETI_LIB)
  try:
    import ganeti.hypervisor.hv_kvm  # noqa: F401 pylint: disable=W0611
  except ImportError as err:
    if (os.path.exists(SYSTEM_PYTHON) and
        os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
        and not os.environ.get("GANETI_ARGV_REEXEC")):
      os.environ["GANETI_ARGV_REEXEC"] = "1"
      os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] +
               sys.argv[1:])
    sys.stderr.write(
      "ganeti_argv.py: cannot import Ganeti from %s (%s).\n"
      "Install it with: apt-get install -y --no-install-recommends "
      "ganeti-3.0\n" % (GANETI_LIB, err))
    sys.exit(3)


_bootstrap()

# pylint: disable=C0413
import json
import logging
import pwd
import shutil
import struct
import tempfile
import types
import uuid as uuidmod

from ganeti import backend
from ganeti import constants
from ganeti import errors
from ganeti import netutils
from ganeti import objects
from ganeti import uidpool
from ganeti import utils
from ganeti.cmdlib.common import CheckParamsNotGlobal
from ganeti.hypervisor import hv_base
from ganeti.hypervisor import hv_kvm
from ganeti.hypervisor.hv_kvm import netdev
from ganeti.hypervisor.hv_kvm import validation
from ganeti.rpc.node import AnnotateDiskParams
from ganeti.utils import process as utils_process
from ganeti.utils import wrapper as utils_wrapper


class Refused(Exception):
  """Ganeti rejected the case; carries the stage where it happened."""

  def __init__(self, stage, err):
    Exception.__init__(self, stage, err)
    self.stage = stage
    self.err = err


class _Launched(Exception):
  """Raised by the RunCmd stand-in once the QEMU launch is captured."""


def _resolve(path):
  """Case file paths are relative to the cwd or to the repository root."""
  if os.path.isabs(path) or os.path.exists(path):
    return path
  return os.path.join(REPO_ROOT, path)


def _read(path):
  with open(_resolve(path)) as f:
    return f.read()


class _LogCollector(logging.Handler):
  def __init__(self):
    logging.Handler.__init__(self, logging.INFO)
    self.records = []

  def emit(self, record):
    try:
      msg = record.getMessage()
    except Exception:  # pylint: disable=W0703
      msg = str(record.msg)
    self.records.append("%s: %s" % (record.levelname, msg))


class _Proxy(types.SimpleNamespace):
  """A module stand-in: given attributes first, the real module otherwise."""

  def __init__(self, real, **overrides):
    types.SimpleNamespace.__init__(self, **overrides)
    object.__setattr__(self, "_real", real)

  def __getattr__(self, name):
    return getattr(object.__getattribute__(self, "_real"), name)


class Harness(object):
  """Runs Ganeti's KVM start path for one case with the host mocked out."""

  def __init__(self, case):
    self.case = case
    self.help = _read(case["qemu_help"])
    self.mlist = _read(case["qemu_machine_help"])
    self.devlist = _read(case["qemu_device_help"])
    self.ifaces = case.get("host_interfaces", {})
    self.commands = []      # every command Ganeti asked RunCmd to run
    self.launch = None      # the captured QEMU command
    self.noclose_fds = None
    self.next_fd = FIRST_FAKE_FD
    self.next_tap = 0
    self.tmp = tempfile.mkdtemp(prefix="ganeti-argv-")
    self._undo = []

  # ---- mocks -----------------------------------------------------------

  def _set(self, obj, name, value):
    self._undo.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)

  def _run_cmd(self, cmd, env=None, noclose_fds=None, **kwargs):
    """utils.RunCmd: answer QEMU probes from the recorded files, succeed for
    helper scripts, capture the QEMU launch."""
    del kwargs
    # As the real RunCmd does: list elements are passed through str().
    cmd = [str(v) for v in cmd] if isinstance(cmd, (list, tuple)) else [cmd]
    kvm = self.kvm_path
    if cmd == [kvm, "--help"]:
      out = self.help
    elif cmd == [kvm, "-machine", "?"]:
      out = self.mlist
    elif cmd == [kvm, "-device", "?"]:
      out = self.devlist
    elif cmd and cmd[0] == constants.PGREP:
      # uidpool._IsUidUsed: no process runs under the pool's uids.
      self.commands.append({"cmd": cmd})
      return utils.RunResult(1, None, "", "", cmd,
                             utils_process._TIMEOUT_NONE, None)
    elif cmd and cmd[0] == kvm:
      self.launch = cmd
      self.noclose_fds = noclose_fds
      raise _Launched()
    else:
      # kvm-ifup (NIC setup), daemon-util start kvmd: pretend success.
      out = ""
    entry = {"cmd": cmd}
    if env:
      entry["env"] = dict((k, v.decode() if isinstance(v, bytes) else v)
                          for k, v in env.items() if k != "PATH")
    self.commands.append(entry)
    return utils.RunResult(0, None, out, "", cmd,
                           utils_process._TIMEOUT_NONE, None)

  def _fake_os_open(self, path, flags, *args):
    """netdev's os.open: /dev/net/tun and /dev/vhost-net give fake fds."""
    if path in ("/dev/net/tun", "/dev/vhost-net"):
      fd = self.next_fd
      self.next_fd += 1
      return fd
    return os.open(path, flags, *args)

  def _fake_ioctl(self, fd, request, arg=0, *args):
    """netdev's fcntl.ioctl: TUNSETIFF names the tap like the kernel does."""
    del fd, args
    if request == constants.TUNSETIFF:
      name, flags = struct.unpack("16sh", arg)
      name = name.strip(b"\x00")
      if not name:
        name = ("tap%d" % self.next_tap).encode("ascii")
        self.next_tap += 1
      return struct.pack("16sh", name, flags)
    raise OSError("ioctl 0x%x not mocked" % request)

  def _sys_exists(self, path):
    """os.path.exists as seen by netutils: /sys/class/net/<if> exists only
    for the case's host_interfaces."""
    prefix = "/sys/class/net/"
    if path.startswith(prefix):
      return path[len(prefix):] in self.ifaces
    return os.path.exists(path)

  def _iface_addresses(self, ifname):
    addrs = self.ifaces.get(ifname, {})
    return {constants.IP4_VERSION: list(addrs.get("4", [])),
            constants.IP6_VERSION: list(addrs.get("6", []))}

  @staticmethod
  def _getpwuid(uid):
    """uid pool uids are assumed to have users on the node."""
    try:
      return pwd.getpwuid(uid)
    except KeyError:
      name = "ganeti-uid-%d" % uid
      logging.info("mock: pretending uid %d is user %r on the node", uid,
                   name)
      return pwd.struct_passwd((name, "x", uid, uid, name, "/nonexistent",
                                "/usr/sbin/nologin"))

  @staticmethod
  def _getpwnam(name):
    """security_domain users are assumed to exist on the node."""
    try:
      return pwd.getpwnam(name)
    except KeyError:
      logging.info("mock: pretending user %r exists on the node", name)
      return pwd.struct_passwd((name, "x", 64055, 64055, name,
                                "/nonexistent", "/usr/sbin/nologin"))

  def install(self):
    # Run dirs: everything Ganeti creates goes under a temp dir.
    kvm = hv_kvm.KVMHypervisor
    self.orig_root = kvm._ROOT_DIR
    new_root = os.path.join(self.tmp, "kvm-hypervisor")
    for attr in ("_ROOT_DIR", "_PIDS_DIR", "_UIDS_DIR", "_CTRL_DIR",
                 "_CONF_DIR", "_NICS_DIR", "_CHROOT_DIR",
                 "_CHROOT_QUARANTINE_DIR"):
      self._set(kvm, attr, getattr(kvm, attr).replace(self.orig_root,
                                                      new_root, 1))
    self._set(kvm, "_DIRS", [d.replace(self.orig_root, new_root, 1)
                             for d in kvm._DIRS])
    # Commands.
    self._set(utils, "RunCmd", self._run_cmd)
    # TAP devices: the real OpenTap runs against fake os.open/ioctl.
    self._set(netdev, "os", _Proxy(os, open=self._fake_os_open))
    self._set(netdev, "fcntl", _Proxy(netdev.fcntl, ioctl=self._fake_ioctl))
    self._set(netdev, "_ProbeTapVnetHdr", lambda fd: True)
    self._set(netdev, "_ProbeTapMqVirtioNet", lambda fd: True)
    self._set(utils_wrapper, "CloseFdNoError", lambda fd, retries=5: None)
    # Host network interfaces (vnc_bind_address / spice_bind resolution).
    self._set(netutils, "os", _Proxy(os, path=_Proxy(os.path,
                                                     exists=self._sys_exists)))
    self._set(netutils, "GetInterfaceIpAddresses", self._iface_addresses)
    # Users named by security_domain.
    self._set(validation, "pwd", _Proxy(pwd, getpwnam=self._getpwnam))
    self._set(hv_kvm, "pwd", _Proxy(pwd, getpwnam=self._getpwnam,
                                    getpwuid=self._getpwuid))
    # security_model=pool: the cluster's uid pool comes from ssconf (case key
    # "uid_pool", Ganeti's syntax, default "64055"; with several uids Ganeti
    # picks one at random), and uidpool.RequestUnusedUid runs for real with
    # its lock dir under the temp dir.
    pool = self.case.get("uid_pool", "64055")
    self._set(hv_kvm, "ssconf", _Proxy(hv_kvm.ssconf, SimpleStore=lambda:
                                       _FakeSsconf(pool)))
    self._set(uidpool, "pathutils", _Proxy(
      uidpool.pathutils, UIDPOOL_LOCKDIR=os.path.join(self.tmp, "uid-pool")))
    # File/dir existence checks of ValidateParameters (kernel_path,
    # initrd_path, cdrom/floppy images, mem_path, vnc_x509_path, ...): the
    # files are assumed to be present on the node. hv_base binds
    # os.path.isfile/isdir into the PARAMETERS tuples, and the file-or-URL
    # lambda looks os.path.isfile up at call time.
    fake_isfile = lambda p: True
    fake_isdir = lambda p: True
    params = {}
    for name, spec in kvm.PARAMETERS.items():
      spec = list(spec)
      if spec[3] is os.path.isfile:
        spec[3] = fake_isfile
      elif spec[3] is os.path.isdir:
        spec[3] = fake_isdir
      params[name] = tuple(spec)
    self._set(kvm, "PARAMETERS", params)
    self._set(hv_base, "os", _Proxy(os, path=_Proxy(os.path,
                                                    isfile=fake_isfile)))
    # Cdrom URLs: _CdromOption asks the URL with an HTTP HEAD (pycurl). Taken
    # to be reachable, as files are taken to exist: nothing leaves the host.
    self._set(hv_kvm, "_CheckUrl", lambda url: True)
    # QMP: never reached (the launch is captured first), but make sure no
    # socket is ever opened.
    self._set(hv_kvm, "QmpConnection", _NoQmp)

  def uninstall(self):
    for obj, name, value in reversed(self._undo):
      setattr(obj, name, value)
    shutil.rmtree(self.tmp, ignore_errors=True)

  # ---- Ganeti objects ----------------------------------------------------

  def build(self):
    """Returns (cluster, instance as noded receives it, block_devices)."""
    case = self.case
    name = case["name"]
    inst_uuid = case["uuid"]
    hvp = dict(case.get("hvparams", {}))

    cluster = objects.Cluster(
      cluster_name="parity.example",
      enabled_hypervisors=[constants.HT_KVM],
      hvparams={constants.HT_KVM: dict(constants.HVC_DEFAULTS[
        constants.HT_KVM])},
      os_hvp={},
      beparams={constants.PP_DEFAULT: dict(constants.BEC_DEFAULTS)},
      nicparams={constants.PP_DEFAULT: dict(constants.NICC_DEFAULTS)},
      diskparams=dict((k, dict(v)) for k, v in
                      constants.DISK_DT_DEFAULTS.items()),
      osparams={}, osparams_private_cluster={},
      )

    # Master side: what LUInstanceCreate / LUInstanceSetParams check.
    try:
      utils.ForceDictType(hvp, constants.HVS_PARAMETER_TYPES)
      filled = cluster.SimpleFillHV(constants.HT_KVM, None, hvp)
      hv_kvm.KVMHypervisor.CheckParameterSyntax(filled)
      CheckParamsNotGlobal(hvp, constants.HVC_GLOBALS, "hypervisor",
                           "instance", "cluster")
    except (errors.GenericError, ValueError) as err:
      raise Refused("master: hvparams syntax (CheckParameterSyntax)", err)

    nics = []
    for idx, n in enumerate(case.get("nics", [])):
      nicparams = {}
      for key in ("mode", "link", "vlan"):
        if key in n:
          nicparams[key] = n[key]
      try:
        utils.ForceDictType(nicparams, constants.NICS_PARAMETER_TYPES)
        objects.NIC.CheckParameterSyntax(cluster.SimpleFillNIC(nicparams))
      except (errors.GenericError, ValueError) as err:
        raise Refused("master: nicparams (NIC.CheckParameterSyntax)", err)
      nics.append(objects.NIC(
        mac=n["mac"], ip=n.get("ip"), name=n.get("name"), network=None,
        nicparams=nicparams,
        uuid=n.get("uuid") or self._uuid(inst_uuid, "nic", idx)))

    disks = []
    for idx, d in enumerate(case.get("disks", [])):
      path = d["path"]
      dev_type = d.get("dev_type") or (
        constants.DT_PLAIN if path.startswith("/dev/") else constants.DT_FILE)
      if dev_type == constants.DT_PLAIN:
        parts = path.split("/")
        logical_id = (parts[-2], parts[-1])
      elif dev_type == constants.DT_FILE:
        logical_id = (constants.FD_DEFAULT, path)
      else:
        logical_id = (d.get("driver", "manual"), path)
      disks.append(objects.Disk(
        dev_type=dev_type, logical_id=logical_id, children=[],
        size=d.get("size", 1024), mode=d.get("mode", constants.DISK_RDWR),
        params={}, iv_name="disk/%d" % idx, name=d.get("name"),
        uuid=d.get("uuid") or self._uuid(inst_uuid, "disk", idx)))

    inst = objects.Instance(
      name=name, uuid=inst_uuid, primary_node="node1-uuid",
      secondary_nodes=[], os="debootstrap+default",
      hypervisor=constants.HT_KVM, hvparams=hvp,
      beparams={constants.BE_MAXMEM: case["memory"],
                constants.BE_MINMEM: case["memory"],
                constants.BE_VCPUS: case["vcpus"]},
      osparams={}, osparams_private={},
      admin_state=constants.ADMINST_UP,
      admin_state_source=constants.ADMIN_SOURCE,
      nics=nics, disks=[d.uuid for d in disks],
      disk_template=disks and disks[0].dev_type or constants.DT_DISKLESS,
      network_port=case.get("network_port"),
      tags=set(), serial_no=1)

    # RPC encoding (rpc/node.py _InstDict) and decoding in noded.
    idict = inst.ToDict()
    idict["hvparams"] = cluster.FillHV(inst)
    idict["beparams"] = cluster.FillBE(inst)
    idict["osparams"] = {}
    idict["disks_info"] = [
      d.ToDict() for d in AnnotateDiskParams(
        disks, cluster.SimpleFillDP({}))]
    for nic in idict["nics"]:
      nic["nicparams"] = objects.FillDict(
        cluster.nicparams[constants.PP_DEFAULT], nic["nicparams"])
    instance = objects.Instance.FromDict(idict)

    # backend._GatherAndLinkBlockDevs: (disk, symlink, userspace uri).
    # The symlink is not created; its name is what QEMU is given.
    block_devices = [(disk, backend._GetBlockDevSymlinkPath(name, idx), None)
                     for idx, disk in enumerate(instance.disks_info)]
    return cluster, instance, block_devices

  @staticmethod
  def _uuid(inst_uuid, kind, idx):
    return str(uuidmod.uuid5(uuidmod.NAMESPACE_URL,
                             "kvmd-parity:%s:%s:%d" % (inst_uuid, kind, idx)))

  # ---- run ---------------------------------------------------------------

  def run(self):
    _, instance, block_devices = self.build()
    self.kvm_path = instance.hvparams[constants.HV_KVM_PATH]
    try:
      # CheckHVParams RPC -> backend.ValidateHVParams on the node.
      hv_kvm.KVMHypervisor.ValidateParameters(instance.hvparams)
    except (errors.GenericError, ValueError) as err:
      raise Refused("node: hvparams validation (ValidateParameters)", err)

    hyper = hv_kvm.KVMHypervisor()   # hypervisor.GetHypervisor(HT_KVM)
    try:
      hyper.StartInstance(instance, block_devices,
                          bool(self.case.get("startup_paused", False)))
    except _Launched:
      pass
    except (errors.GenericError, ValueError) as err:
      raise Refused("node: StartInstance", err)
    if self.launch is None:
      raise Refused("node: StartInstance",
                    RuntimeError("StartInstance returned without "
                                 "launching QEMU"))
    self.devices = {"disks": [d.uuid for d, _, _ in block_devices],
                    "nics": [n.uuid for n in instance.nics]}
    return [self._unmap(a) for a in self.launch]

  def _unmap(self, arg):
    """Report run-dir paths where Ganeti really puts them."""
    return arg.replace(os.path.join(self.tmp, "kvm-hypervisor"),
                       self.orig_root)


class _FakeSsconf(object):
  def __init__(self, uid_pool):
    self.uid_pool = uid_pool

  def GetUidPool(self):
    return "\n".join(self.uid_pool.split(","))

  def GetPrimaryIPFamily(self):
    return netutils.IP4Address.family


class _NoQmp(object):
  def __init__(self, filename):
    self.filename = filename

  def __getattr__(self, name):
    raise RuntimeError("QMP %s used on %s: not mocked" % (name,
                                                           self.filename))


def main(argv):
  if argv[1:] == ["--defaults"]:
    json.dump(constants.HVC_DEFAULTS[constants.HT_KVM], sys.stdout, indent=1,
              sort_keys=True)
    sys.stdout.write("\n")
    return 0
  if len(argv) > 1:
    with open(argv[1]) as f:
      case = json.load(f)
  else:
    case = json.load(sys.stdin)

  root = logging.getLogger()
  root.setLevel(logging.INFO)
  collector = _LogCollector()
  root.handlers = [collector]

  harness = Harness(case)
  harness.install()
  out = {"ganeti_version": constants.RELEASE_VERSION}
  status = 0
  try:
    out["argv"] = harness.run()
    out["noclose_fds"] = harness.noclose_fds
    out["devices"] = harness.devices
  except Refused as ref:
    out["argv"] = None
    out["stage"] = ref.stage
    out["error"] = "%s: %s" % (type(ref.err).__name__, ref.err)
    status = 2
  finally:
    harness.uninstall()
  out["commands"] = [c for c in harness.commands]
  out["log"] = [harness._unmap(r) for r in collector.records]
  ordered = {"argv": out.pop("argv")}
  ordered.update(out)
  # default=str: Ganeti hands some values over as bytes (e.g. tap names).
  json.dump(ordered, sys.stdout, indent=1, default=str)
  sys.stdout.write("\n")
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv))
