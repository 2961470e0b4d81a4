//! How the daemon and the control server call the supervisor without importing actix.

use actix::prelude::*;
use tracing::warn;

use crate::api::{ApiError, ApiReply, ApiRequest, ErrorCode};
use crate::config::Config;
use crate::events::EventBus;
use crate::store::Store;
use crate::vm::JobIds;

use super::{Call, Supervisor};

/// A cheap, cloneable way to call the supervisor.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
    bus: EventBus,
    run_dir: std::path::PathBuf,
}

impl SupervisorHandle {
    pub fn start(config: Config, store: Store, bus: EventBus, ids: JobIds) -> Self {
        Self {
            run_dir: config.node.run_dir.clone(),
            addr: Supervisor::new(config, store, bus.clone(), ids).start(),
            bus,
        }
    }

    pub async fn call(&self, req: ApiRequest) -> Result<ApiReply, ApiError> {
        self.addr.send(Call(req)).await.map_err(|e| {
            ApiError::new(ErrorCode::Internal, format!("supervisor unavailable: {e}"))
        })?
    }

    /// The run directory (for a console's socket).
    pub fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    /// The event bus (for `subscribe`).
    pub fn events(&self) -> &EventBus {
        &self.bus
    }

    /// Fire-and-forget reload (from SIGHUP); the outcome is logged.
    pub fn reload_in_background(&self) {
        let h = self.clone();
        actix::spawn(async move {
            if let Err(e) = h.call(ApiRequest::Reload).await {
                warn!(error = %e, "reload failed; keeping the previous config");
            }
        });
    }
}
