//! Typed QMP commands: methods on [`Qmp`] that take and return Rust types (`types.rs`), each
//! under the client's default command deadline (use [`Qmp::with_timeout`] for another one).
//!
//! Invariant: no JSON here — `wire.rs` encodes the arguments and decodes the replies — and no
//! policy: a command's failure is returned to the caller, never acted upon.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::client::Qmp;
use super::types::{
    CpuThread, Display, MachineInfo, MigrationInfo, MigrationParams, QemuVersion, Status,
};
use super::{wire, QmpError};

fn reply<T>(command: &str, decoded: Result<T, String>) -> Result<T, QmpError> {
    decoded.map_err(|reason| QmpError::Reply {
        command: command.into(),
        reason,
    })
}

impl Qmp {
    /// `query-status`: the run state.
    pub async fn query_status(&self) -> Result<Status, QmpError> {
        let v = self.call("query-status", None, None).await?;
        reply("query-status", wire::decode_status(v))
    }

    /// `cont`: run the guest (leave `prelaunch` or `paused`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.call("cont", None, None).await.map(drop)
    }

    /// `stop`: pause the guest.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.call("stop", None, None).await.map(drop)
    }

    /// `system_powerdown`: press the ACPI power button (the guest decides what to do).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.call("system_powerdown", None, None).await.map(drop)
    }

    /// `balloon`: ask the guest's balloon driver for a memory size (bytes); the guest gets
    /// there in its own time (`BALLOON_CHANGE` events, `query-balloon`).
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.call("balloon", wire::args_balloon(bytes), None)
            .await
            .map(drop)
    }

    /// Ask the guest's balloon driver for memory statistics every `secs` seconds (0: stop).
    pub async fn set_guest_stats_interval(&self, secs: u64) -> Result<(), QmpError> {
        self.call(
            "qom-set",
            wire::args_qom_set(
                "/machine/peripheral/balloon0",
                "guest-stats-polling-interval",
                serde_json::json!(secs),
            ),
            None,
        )
        .await
        .map(drop)
    }

    /// The guest's last memory statistics (its balloon driver's).
    pub async fn guest_stats(&self) -> Result<super::GuestStats, QmpError> {
        let v = self
            .call(
                "qom-get",
                wire::args_qom_get("/machine/peripheral/balloon0", "guest-stats"),
                None,
            )
            .await?;
        reply("qom-get guest-stats", wire::decode_guest_stats(v))
    }

    /// `query-blockstats`: every block device's I/O counters.
    pub async fn query_blockstats(&self) -> Result<Vec<super::BlockStats>, QmpError> {
        let v = self.call("query-blockstats", None, None).await?;
        reply("query-blockstats", wire::decode_blockstats(v))
    }

    /// `query-balloon`: the guest's memory as the balloon sees it, in bytes.
    pub async fn query_balloon(&self) -> Result<u64, QmpError> {
        let v = self.call("query-balloon", None, None).await?;
        reply("query-balloon", wire::decode_balloon(v))
    }

    /// `system_reset`: reset the machine.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.call("system_reset", None, None).await.map(drop)
    }

    /// `quit`: make QEMU exit. A connection that closes before the reply arrives counts as
    /// success (QEMU was on its way out); one already closed before sending does not.
    pub async fn quit(&self) -> Result<(), QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        match self.call("quit", None, None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `query-cpus-fast`: each vCPU's host thread. A reply lacking a thread id is an error
    /// rather than a shorter list.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuThread>, QmpError> {
        let v = self.call("query-cpus-fast", None, None).await?;
        reply("query-cpus-fast", wire::decode_cpus(v))
    }

    /// `set_password`: set the VNC or SPICE password. The password is never logged.
    pub async fn set_password(&self, protocol: Display, password: &str) -> Result<(), QmpError> {
        let args = wire::args_set_password(protocol, password);
        self.call("set_password", args, None).await.map(drop)
    }

    /// `query-version`: QEMU's version (the same as the greeting's).
    pub async fn query_version(&self) -> Result<QemuVersion, QmpError> {
        let v = self.call("query-version", None, None).await?;
        reply("query-version", wire::decode_version(v))
    }

    /// `query-machines`: the machine types this binary offers.
    pub async fn query_machines(&self) -> Result<Vec<MachineInfo>, QmpError> {
        let v = self.call("query-machines", None, None).await?;
        reply("query-machines", wire::decode_machines(v))
    }

    /// `qom-list-types`: names of the types implementing `implements`; abstract ones too when
    /// `abstract_` is true.
    pub async fn qom_list_types(
        &self,
        implements: &str,
        abstract_: bool,
    ) -> Result<Vec<String>, QmpError> {
        let args = wire::args_qom_list_types(implements, abstract_);
        let v = self.call("qom-list-types", args, None).await?;
        reply("qom-list-types", wire::decode_type_names(v))
    }

    /// `getfd`: hand QEMU a file descriptor (SCM_RIGHTS, in the same `sendmsg` as the
    /// command) under `name`, for later use by name (`fd=name` in `netdev_add`, ...).
    pub async fn getfd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let args = wire::args_fdname(name);
        self.call("getfd", args, Some(fd.as_raw_fd()))
            .await
            .map(drop)
    }

    /// `closefd`: close a descriptor QEMU received with [`Qmp::getfd`].
    pub async fn closefd(&self, name: &str) -> Result<(), QmpError> {
        let args = wire::args_fdname(name);
        self.call("closefd", args, None).await.map(drop)
    }

    /// `blockdev-add` of an image file: a `file` node under a `raw`/`qcow2` node `node`.
    pub async fn blockdev_add_file(
        &self,
        node: &str,
        path: &str,
        format: &str,
        read_only: bool,
    ) -> Result<(), QmpError> {
        let args = serde_json::json!({
            "driver": format,
            "node-name": node,
            "read-only": read_only,
            "file": {"driver": "file", "filename": path, "read-only": read_only},
        });
        self.call("blockdev-add", Some(args), None).await.map(drop)
    }

    /// `blockdev-del`.
    pub async fn blockdev_del(&self, node: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "node-name": node });
        self.call("blockdev-del", Some(args), None).await.map(drop)
    }

    /// `query-named-block-nodes`: the node names of every block node.
    pub async fn block_node_names(&self) -> Result<Vec<String>, QmpError> {
        let v = self
            .call(
                "query-named-block-nodes",
                Some(serde_json::json!({"flat": true})),
                None,
            )
            .await?;
        reply("query-named-block-nodes", wire::decode_node_names(v))
    }

    /// `query-commands`: the names of the QMP commands this QEMU has.
    pub async fn query_commands(&self) -> Result<Vec<String>, QmpError> {
        let v = self.call("query-commands", None, None).await?;
        reply("query-commands", wire::decode_names(v))
    }

    /// `netdev_add` of QEMU's user networking.
    pub async fn netdev_add_user(&self, id: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "type": "user", "id": id });
        self.call("netdev_add", Some(args), None).await.map(drop)
    }

    /// `netdev_add` of a tap QEMU received as `fdname` (`getfd`).
    pub async fn netdev_add_tap(&self, id: &str, fdname: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "type": "tap", "id": id, "fd": fdname, "vhost": false });
        self.call("netdev_add", Some(args), None).await.map(drop)
    }

    /// `set_link`: a NIC's link up or down, as its guest sees it.
    pub async fn set_link(&self, id: &str, up: bool) -> Result<(), QmpError> {
        let args = serde_json::json!({ "name": id, "up": up });
        self.call("set_link", Some(args), None).await.map(drop)
    }

    /// `netdev_del`.
    pub async fn netdev_del(&self, id: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "id": id });
        self.call("netdev_del", Some(args), None).await.map(drop)
    }

    /// `device_add` with the given properties (`driver`, `id`, `bus`, `addr`, ...).
    pub async fn device_add(&self, props: serde_json::Value) -> Result<(), QmpError> {
        self.call("device_add", Some(props), None).await.map(drop)
    }

    /// `device_del`: ask the guest to let the device go (`DEVICE_DELETED` says it did).
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "id": id });
        self.call("device_del", Some(args), None).await.map(drop)
    }

    /// Every PCI device (`query-pci`): the root bus and behind its bridges.
    pub async fn query_pci(&self) -> Result<Vec<super::PciDevice>, QmpError> {
        let v = self.call("query-pci", None, None).await?;
        reply("query-pci", wire::decode_pci_devices(v))
    }

    /// `blockdev-add` of a URL block node (`http`, `https`, `ftp`, `ftps`: QEMU's curl
    /// driver, a loadable module on some distributions).
    pub async fn blockdev_add_url(
        &self,
        driver: &str,
        node_name: &str,
        url: &str,
    ) -> Result<(), QmpError> {
        let args = wire::args_blockdev_url(driver, node_name, url);
        self.call("blockdev-add", args, None).await.map(drop)
    }

    /// `migrate-set-capabilities`: turn migration capabilities on or off (set them on both
    /// ends before the migration starts).
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let args = wire::args_migrate_capabilities(caps);
        self.call("migrate-set-capabilities", args, None)
            .await
            .map(drop)
    }

    /// `query-migrate-capabilities`: every capability this QEMU knows, with its state.
    pub async fn query_migrate_capabilities(&self) -> Result<Vec<(String, bool)>, QmpError> {
        let v = self.call("query-migrate-capabilities", None, None).await?;
        reply("query-migrate-capabilities", wire::decode_capabilities(v))
    }

    /// `migrate-set-parameters`: bandwidth, downtime limit, throttling.
    pub async fn migrate_set_parameters(&self, p: &MigrationParams) -> Result<(), QmpError> {
        let args = wire::args_migrate_parameters(p);
        self.call("migrate-set-parameters", args, None)
            .await
            .map(drop)
    }

    /// `query-migrate-parameters`: the parameters kvmd sets (to put them back afterwards).
    pub async fn query_migrate_parameters(&self) -> Result<MigrationParams, QmpError> {
        let v = self.call("query-migrate-parameters", None, None).await?;
        reply("query-migrate-parameters", wire::decode_migration_params(v))
    }

    /// `migrate`: start sending this VM to `uri` (`tcp:HOST:PORT`); returns at once.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.call("migrate", wire::args_uri(uri), None)
            .await
            .map(drop)
    }

    /// `migrate-incoming`: a QEMU started with `-incoming defer` listens on `uri`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.call("migrate-incoming", wire::args_uri(uri), None)
            .await
            .map(drop)
    }

    /// `query-migrate`: the state of the current (or last) migration.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.call("query-migrate", None, None).await?;
        reply("query-migrate", wire::decode_migration(v))
    }

    /// `migrate_cancel`: abandon the outgoing migration (the destination QEMU exits).
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.call("migrate_cancel", None, None).await.map(drop)
    }

    /// `migrate-start-postcopy`: switch a running precopy migration to postcopy.
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.call("migrate-start-postcopy", None, None)
            .await
            .map(drop)
    }
}
