//! A minimal QMP client (QEMU Machine Protocol: JSON lines over a unix socket) for the
//! `qemu-storage-daemon` helpers: capabilities negotiation, then one command and its answer.
//! Asynchronous events the daemon sends in between are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{AttachError, Result};

const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `command` with `arguments` on the QMP socket `socket`; returns its `return` value.
pub async fn execute(socket: &Path, command: &str, arguments: Value) -> Result<Value> {
    let shown = format!("QMP {command} on {}", socket.display());
    match tokio::time::timeout(QMP_TIMEOUT, session(socket, command, arguments)).await {
        Ok(r) => r,
        Err(_) => Err(AttachError::Timeout {
            command: shown,
            after: QMP_TIMEOUT,
        }),
    }
}

async fn session(socket: &Path, command: &str, arguments: Value) -> Result<Value> {
    let io = |e| AttachError::io("talk QMP on", socket, e);
    let stream = UnixStream::connect(socket).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting, then capabilities negotiation.
    next_reply(&mut lines, socket).await?;
    for (cmd, args) in [("qmp_capabilities", json!({})), (command, arguments)] {
        let mut line = serde_json::to_vec(&json!({ "execute": cmd, "arguments": args })).expect("json");
        line.push(b'\n');
        write.write_all(&line).await.map_err(io)?;
        let reply = next_reply(&mut lines, socket).await?;
        if let Some(err) = reply.get("error") {
            return Err(AttachError::Helper {
                program: "qemu-storage-daemon".into(),
                reason: format!(
                    "QMP {cmd}: {}",
                    err.get("desc").and_then(Value::as_str).unwrap_or("error")
                ),
            });
        }
        if cmd == command {
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }
    unreachable!("the loop returns at the command")
}

/// The next line that is not an event.
async fn next_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    socket: &Path,
) -> Result<Value> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| AttachError::io("read QMP from", socket, e))?
            .ok_or_else(|| AttachError::Helper {
                program: "qemu-storage-daemon".into(),
                reason: format!("closed its QMP socket {}", socket.display()),
            })?;
        let v: Value = serde_json::from_str(&line).map_err(|e| AttachError::Helper {
            program: "qemu-storage-daemon".into(),
            reason: format!("sent a line that is not JSON on QMP: {e}"),
        })?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
}
