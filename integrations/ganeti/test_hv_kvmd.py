#!/usr/bin/python3
"""The kvmd hypervisor module driven with Ganeti's own objects against a real kvmd.

Run by tests/ganeti_module.rs inside a private mount namespace (Ganeti's KVMHypervisor
creates its directories under /run/ganeti), with KVMD_SOCKET set and PYTHONPATH holding
Ganeti's Python package and this directory. Argument: the guest kernel directory.
Prints one line per check; exits non-zero at the first failure.
"""

import subprocess
import sys
import time

from ganeti import constants, objects
from ganeti.hypervisor import hv_base

import hv_kvmd

GUEST = sys.argv[1]
NAME = "g1.example.test"


def check(what, ok, detail=""):
  print("%s %s %s" % ("ok  " if ok else "FAIL", what, detail))
  if not ok:
    sys.exit(1)


def instance(maxmem=192):
  hvp = dict(constants.HVC_DEFAULTS[constants.HT_KVM])
  hvp.update({
    constants.HV_KERNEL_PATH: GUEST + "/vmlinux",
    constants.HV_INITRD_PATH: GUEST + "/initramfs.gz",
    constants.HV_ROOT_PATH: "/dev/ram0",
    constants.HV_KERNEL_ARGS: "quiet panic=-1",
    constants.HV_KVM_FLAG: constants.HT_KVM_DISABLED,
    constants.HV_VNC_BIND_ADDRESS: "",
    constants.HV_KVM_PATH: "/usr/bin/qemu-system-x86_64",
  })
  return objects.Instance(
    name=NAME, uuid="1c3d5e7f-0a2b-4c6d-8e0f-123456789abc",
    hypervisor=constants.HT_KVM, hvparams=hvp,
    beparams={constants.BE_MAXMEM: maxmem, constants.BE_MINMEM: 128,
              constants.BE_VCPUS: 1},
    nics=[], disks=[], network_port=None, os="noop")


def info(h):
  return h.GetInstanceInfo(NAME)


def main():
  h = hv_kvmd.KvmdHypervisor()
  inst = instance()
  # Start (with its definition): kvmd runs it, managed by Ganeti.
  t0 = time.monotonic()
  h.StartInstance(inst, [], False)
  started = time.monotonic() - t0
  i = info(h)
  check("StartInstance runs it", i is not None and
        i[4] == hv_base.HvInstanceState.RUNNING and i[1] > 0,
        "%r in %.2f s" % (i, started))
  vm = hv_kvmd.Call("info", name=NAME)["instances"][0]
  check("kvmd says it is Ganeti's", vm.get("managed_by") == "ganeti",
        vm.get("managed_by"))
  check("ListInstances lists it", NAME in h.ListInstances())
  check("GetAllInstancesInfo has it",
        [x[0] for x in h.GetAllInstancesInfo()] == [NAME])
  # Ganeti's own view of the process: the pid is a QEMU named as the instance.
  cmdline = open("/proc/%d/cmdline" % i[1]).read().split("\0")
  check("the pid is QEMU's", "-name" in cmdline and
        any(a.startswith(NAME) for a in cmdline))
  node = h.GetNodeInfo()
  check("GetNodeInfo", node["memory_total"] > 0 and node["cpu_total"] > 0 and
        len(node.get("hv_version", ())) == 3, repr(node))
  check("Verify finds no error", h.Verify() is None, repr(h.Verify()))
  group = objects.NodeGroup(name="default", ndparams={})
  pnode = objects.Node(name="node1.example.test", ndparams={})
  cons = h.GetInstanceConsole(inst, pnode, group, inst.hvparams, inst.beparams)
  check("GetInstanceConsole gives kvmctl console", cons.command[-2:] ==
        ["console", NAME], repr(cons.command))
  out = subprocess.run(cons.command + ["--command"], capture_output=True,
                       text=True)
  check("the console command works", out.returncode == 0 and
        "serial console" in out.stdout, out.stdout + out.stderr)
  # The guest powers itself off: Ganeti's user shutdown (SHUTDOWN), no monitor needed.
  vm = hv_kvmd.Call("info", name=NAME)["instances"][0]
  sock = vm["hardware"]["serial_socket"]
  log = sock.rsplit("/", 1)[0] + "/serial.log"
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    with open(log, "rb") as f:
      if b"GUEST-READY" in f.read():
        break
    time.sleep(0.2)
  import socket as s
  c = s.socket(s.AF_UNIX)
  c.connect(sock)
  c.sendall(b"poweroff -f\n")
  time.sleep(0.5)  # closing at once can cut the line short in QEMU's chardev
  c.close()
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    i = info(h)
    if i is not None and i[4] == hv_base.HvInstanceState.SHUTDOWN:
      break
    time.sleep(0.2)
  if i is None or i[4] != hv_base.HvInstanceState.SHUTDOWN:
    with open(log, "rb") as f:
      print(f.read()[-1500:].decode("utf-8", "replace"))
  check("a guest power-off is Ganeti's SHUTDOWN", i is not None and
        i[4] == hv_base.HvInstanceState.SHUTDOWN, repr(i))
  check("ListInstances no longer lists it", NAME not in h.ListInstances())
  # Ganeti stops a user-down instance (again and again), then cleans up.
  h.StopInstance(inst)
  h.StopInstance(inst, force=True)
  h.CleanupInstance(NAME)
  check("after cleanup Ganeti sees nothing", info(h) is None, repr(info(h)))
  # Start again, with more memory, paused; stop it twice (idempotent).
  h.StartInstance(instance(maxmem=256), [], True)
  vm = hv_kvmd.Call("info", name=NAME)["instances"][0]
  check("a new start brings the new definition", vm["memory_mib"] == 256 and
        vm["state"] == "paused", "%s %s" % (vm["memory_mib"], vm["state"]))
  h.StopInstance(inst, force=True)
  h.StopInstance(inst, force=True)
  check("stopped twice, still fine", info(h) is None)
  h.CleanupInstance(NAME)
  h.CleanupInstance(NAME)
  check("cleaned up twice, still fine", NAME not in
        [v["name"] for v in hv_kvmd.Call("list", all=True)["instances"]])


if __name__ == "__main__":
  main()
