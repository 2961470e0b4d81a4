//! A fake QMP server for faults a real QEMU will not produce on demand: it greets, answers
//! `qmp_capabilities`, then hands every command to a script.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

pub enum Say {
    Nothing,
    Now(Vec<u8>),
    After(Duration, Vec<u8>),
    Close,
}

/// A fake QMP server: greets, answers qmp_capabilities after `caps_delay`, then hands each
/// later command to `script`. Bytes are sent in two pieces to exercise reassembly.
pub async fn fake_with(
    path: &Path,
    greeting: &'static str,
    caps_delay: Duration,
    script: impl Fn(Value) -> Say + Send + 'static,
) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(greeting.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap();
            let say = if v["execute"] == "qmp_capabilities" {
                Say::After(caps_delay, reply(&v, json!({})))
            } else {
                script(v)
            };
            let bytes = match say {
                Say::Nothing => continue,
                Say::Close => return,
                Say::Now(b) => b,
                Say::After(d, b) => {
                    tokio::time::sleep(d).await;
                    b
                }
            };
            let (a, b) = bytes.split_at(bytes.len() / 2);
            if w.write_all(a).await.is_err() || w.write_all(b).await.is_err() {
                return; // the client gave up
            }
        }
    });
}

pub async fn fake(path: &Path, script: impl Fn(Value) -> Say + Send + 'static) {
    fake_with(path, GREETING, Duration::ZERO, script).await
}

pub fn reply(command: &Value, value: Value) -> Vec<u8> {
    format!("{}\n", json!({"return": value, "id": command["id"]})).into_bytes()
}

pub const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}, \"package\": \"\"}, \"capabilities\": []}}\n";
