//! Serial consoles shared by control connections: one connection to a VM's `serial.sock`
//! (QEMU serves one client at a time) fanned out to every attached session; one session at a
//! time types, the others watch. The connection to QEMU is closed when the last session
//! leaves.
//!
//! Invariant: a slow viewer never slows the console: output is a bounded broadcast, and a
//! viewer that falls behind loses bytes (it is told so), never blocks the others.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};

/// Output chunks kept for a viewer that is behind.
const BACKLOG: usize = 1024;

/// One VM's console.
#[derive(Debug)]
pub struct Hub {
    out: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
    writer: AtomicBool,
    /// Turns true when the serial connection closed (QEMU went away).
    gone: watch::Receiver<bool>,
}

/// An attached session: output to read, and input to send if it is the writer.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    pub output: broadcast::Receiver<Vec<u8>>,
    /// Turns true when the console is gone (QEMU's end of the serial connection closed).
    pub gone: watch::Receiver<bool>,
    writer: bool,
}

impl Session {
    /// Type on the console (ignored for a viewer). False once the console is gone. Never
    /// waits: keys typed into a console that does not take them (a guest not draining its
    /// UART) are dropped.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        !self.writer || !matches!(self.hub.input.try_send(bytes), Err(TrySendError::Closed(_)))
    }

    pub fn is_writer(&self) -> bool {
        self.writer
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.writer {
            self.hub.writer.store(false, Ordering::SeqCst);
        }
    }
}

/// Why a session could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot connect to the serial console: {0}")]
    Connect(#[source] std::io::Error),
    #[error("another session types on this console; attach read-only to watch")]
    WriterTaken,
}

/// The consoles of this kvmd, by instance. Attaches are serialized, so two first sessions
/// never open two connections to one console.
#[derive(Clone, Debug, Default)]
pub struct Consoles {
    hubs: Arc<Mutex<HashMap<String, Weak<Hub>>>>,
    attaching: Arc<tokio::sync::Mutex<()>>,
}

impl Consoles {
    /// Attach to the console of `name` on `serial` (connecting if nobody is attached).
    pub async fn attach(
        &self,
        name: &str,
        serial: &Path,
        write: bool,
    ) -> Result<Session, AttachError> {
        let _one_at_a_time = self.attaching.lock().await;
        let existing = self
            .hubs
            .lock()
            .expect("consoles")
            .get(name)
            .and_then(Weak::upgrade)
            .filter(|h| !*h.gone.borrow());
        let hub = match existing {
            Some(h) => h,
            None => {
                let stream = UnixStream::connect(serial)
                    .await
                    .map_err(AttachError::Connect)?;
                let hub = start(stream);
                self.hubs
                    .lock()
                    .expect("consoles")
                    .insert(name.to_string(), Arc::downgrade(&hub));
                hub
            }
        };
        if write && hub.writer.swap(true, Ordering::SeqCst) {
            return Err(AttachError::WriterTaken);
        }
        Ok(Session {
            output: hub.out.subscribe(),
            gone: hub.gone.clone(),
            hub,
            writer: write,
        })
    }
}

/// The hub's task: serial → every session; the writer's input → serial. It ends when the
/// serial connection closes (QEMU went) or the last session left (the input channel closes).
fn start(stream: UnixStream) -> Arc<Hub> {
    let (out, _) = broadcast::channel(BACKLOG);
    let (input, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let (gone_tx, gone) = watch::channel(false);
    let hub = Arc::new(Hub {
        out: out.clone(),
        input,
        writer: AtomicBool::new(false),
        gone,
    });
    let (mut read, mut write) = stream.into_split();
    // Input on its own task: a console that does not take input never stops the output.
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if write.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut writer = writer;
        loop {
            tokio::select! {
                n = read.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        let _ = out.send(buf[..k].to_vec());
                    }
                },
                // The last session left (the input channel closed) or the write side failed.
                _ = &mut writer => break,
            }
        }
        writer.abort();
        let _ = gone_tx.send(true);
    });
    hub
}
