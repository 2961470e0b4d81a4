//! How tasks report to their VM actor: the [`Internal`] message and the typed [`Reporter`]
//! they hold instead of the actor's address.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, watch};

use crate::host::process::QemuProcess;
use crate::model::exit::ExitStatus;
use crate::qmp::{Notice, Qmp};
use crate::vm::core::{Input, Request, Ticket};

use super::recover;

/// What tasks report.
// Boxing the Input would cost an allocation per fact to save memory in a mailbox that holds
// a few messages at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Message)]
#[rtype(result = "()")]
pub(super) enum Internal {
    /// A fact for the core.
    Input(Input),
    /// A request whose checks ran off the actor.
    Request {
        ticket: Ticket,
        request: Request,
    },
    /// A QEMU of generation `gen` was spawned: its handle and exit watch.
    Process {
        gen: u64,
        process: Arc<QemuProcess>,
        exit: watch::Receiver<Option<ExitStatus>>,
    },
    /// A QMP connection to the QEMU of `gen` is up.
    Qmp {
        gen: u64,
        qmp: Qmp,
        notices: mpsc::Receiver<Notice>,
    },
    Recovered(Box<recover::Found>),
}

/// The typed sender tasks report through.
#[derive(Clone)]
pub(super) struct Reporter(pub(super) Recipient<Internal>);

impl Reporter {
    pub fn input(&self, input: Input) {
        self.0.do_send(Internal::Input(input));
    }

    pub fn process(
        &self,
        gen: u64,
        process: Arc<QemuProcess>,
        exit: watch::Receiver<Option<ExitStatus>>,
    ) {
        self.0.do_send(Internal::Process { gen, process, exit });
    }

    pub fn qmp(&self, gen: u64, qmp: Qmp, notices: mpsc::Receiver<Notice>) {
        self.0.do_send(Internal::Qmp { gen, qmp, notices });
    }

    pub fn request(&self, ticket: Ticket, request: Request) {
        self.0.do_send(Internal::Request { ticket, request });
    }

    pub fn recovered(&self, found: recover::Found) {
        self.0.do_send(Internal::Recovered(Box::new(found)));
    }
}
