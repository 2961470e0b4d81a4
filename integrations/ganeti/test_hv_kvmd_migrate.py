#!/usr/bin/python3
"""Ganeti's migration steps, as Ganeti's cmdlib calls them, through the kvmd module between two
kvmds on two network namespaces: MigrationInfo on the source, AcceptInstance on the target,
MigrateInstance, GetMigrationStatus every second, FinalizeMigrationSource, then
FinalizeMigrationDst. Run by tests/ganeti_module.rs (see test_hv_kvmd.py).

Arguments: guest dir, source socket, target socket, target IP.
"""

import os
import sys
import time

from ganeti import constants
from ganeti.hypervisor import hv_base

import hv_kvmd
from test_hv_kvmd import check, instance, NAME

_, GUEST, SRC, DST, TARGET_IP = sys.argv


def on(sock):
  os.environ["KVMD_SOCKET"] = sock


def main():
  h = hv_kvmd.KvmdHypervisor()
  inst = instance()
  inst.hvparams[constants.HV_MIGRATION_PORT] = 8102
  on(SRC)
  h.StartInstance(inst, [], False)
  check("started on the source", h.GetInstanceInfo(NAME) is not None)
  t0 = time.monotonic()
  info = h.MigrationInfo(inst)
  on(DST)
  h.AcceptInstance(inst, info, TARGET_IP)
  on(SRC)
  h.MigrateInstance("cluster1.example.test", inst, TARGET_IP, True)
  deadline = time.monotonic() + 120
  status = None
  while time.monotonic() < deadline:
    st = h.GetMigrationStatus(inst)
    status = st.status
    if status not in constants.HV_KVM_MIGRATION_ACTIVE_STATUSES and \
        status != constants.HV_MIGRATION_ACTIVE:
      break
    time.sleep(1)  # Ganeti polls every second
  check("GetMigrationStatus says completed", status == constants.HV_MIGRATION_COMPLETED,
        "%s (%d of %d bytes)" % (status, st.transferred_ram, st.total_ram))
  h.FinalizeMigrationSource(inst, True, True)
  on(DST)
  h.FinalizeMigrationDst(inst, info, True)
  took = time.monotonic() - t0
  i = h.GetInstanceInfo(NAME)
  check("running on the target", i is not None and
        i[4] == hv_base.HvInstanceState.RUNNING, "%r; the steps took %.2f s" % (i, took))
  on(SRC)
  check("gone from the source", h.GetInstanceInfo(NAME) is None, repr(h.GetInstanceInfo(NAME)))
  check("the source lists it no more", NAME not in h.ListInstances())
  on(DST)
  vm = hv_kvmd.Call("info", name=NAME)["instances"][0]
  check("the target's kvmd knows it is Ganeti's", vm.get("managed_by") == "ganeti",
        repr(vm.get("managed_by")))
  h.StopInstance(inst, force=True)
  h.CleanupInstance(NAME)
  print("migration through the module: %.2f s" % took)


if __name__ == "__main__":
  main()
