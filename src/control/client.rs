//! The CLI's side of the control socket: a blocking connection that writes request lines and
//! reads reply lines. It does not retry or interpret units beyond telling replies apart.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{socket_path, ControlError};
use crate::datadir::DirLock;

/// One reply line, told apart by its keys.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// `{"error": ..., "code": ..}`.
    Error {
        /// What failed and how to fix it.
        message: String,
        /// A machine-readable code, for the errors a client may act on.
        code: Option<String>,
    },
    /// A submit receipt (`origin`, `seq`, `physkey`); the line as the node sent it.
    Receipt(String),
    /// A delivered unit; the line as the node sent it, and its origin and seq.
    Unit {
        /// The line.
        line: String,
        /// Its origin.
        origin: String,
        /// Its seq.
        seq: u64,
    },
    /// `{"acked": ...}`.
    Acked,
    /// `{"subscribed": ...}`.
    Subscribed,
    /// `{"status": ..., "control": ...}`.
    Status(Value),
}

impl Reply {
    /// Classifies a reply line; `None` for a line this client does not understand.
    pub fn parse(line: &str) -> Option<Reply> {
        let v: Value = serde_json::from_str(line).ok()?;
        let obj = v.as_object()?;
        if let Some(e) = obj.get("error") {
            let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
            let code = obj.get("code").and_then(Value::as_str).map(str::to_string);
            return Some(Reply::Error { message, code });
        }
        if obj.contains_key("acked") {
            return Some(Reply::Acked);
        }
        if obj.contains_key("subscribed") {
            return Some(Reply::Subscribed);
        }
        if obj.contains_key("status") {
            return Some(Reply::Status(v));
        }
        let origin = obj.get("origin")?.as_str()?.to_string();
        let seq = obj.get("seq")?.as_u64()?;
        if obj.contains_key("kind") {
            Some(Reply::Unit { line: line.to_string(), origin, seq })
        } else {
            Some(Reply::Receipt(line.to_string()))
        }
    }
}

/// A connection to a running node's control socket.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    /// A reply line read in part when a read timed out.
    partial: Vec<u8>,
}

impl ControlClient {
    /// Connects to the node running in `dir`. `Ok(None)` when none runs (no socket, or a stale
    /// one). While another process holds the directory's lock but the socket is not there yet
    /// (a node starting), waits up to `wait` for it.
    pub fn connect(dir: &Path, wait: Duration) -> Result<Option<ControlClient>, ControlError> {
        let path = socket_path(dir);
        let deadline = Instant::now() + wait;
        loop {
            match UnixStream::connect(&path) {
                Ok(stream) => return Self::from_stream(stream).map(Some),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if Instant::now() >= deadline || DirLock::holder(dir).is_none() {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => return Err(ControlError::Connect { path, source }),
            }
        }
    }

    fn from_stream(stream: UnixStream) -> Result<ControlClient, ControlError> {
        let io = |source| ControlError::Io { source };
        let writer = BufWriter::new(stream.try_clone().map_err(io)?);
        Ok(ControlClient { reader: BufReader::new(stream), writer, partial: Vec::new() })
    }

    /// Queues one request line (sent at the next [`ControlClient::flush`]).
    pub fn queue(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")
    }

    /// Sends what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Sends one request line now.
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        self.queue(line)?;
        self.flush()
    }

    /// Reads one reply line; `None` when the node closed the connection. A final line without
    /// a newline (the node stopped mid-line) is dropped. After a read timeout (`WouldBlock` or
    /// `TimedOut`) the part read so far is kept for the next call.
    pub fn recv_line(&mut self) -> io::Result<Option<String>> {
        self.reader.read_until(b'\n', &mut self.partial)?;
        if self.partial.last() != Some(&b'\n') {
            self.partial.clear();
            return Ok(None);
        }
        self.partial.pop();
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Ok(Some(line))
    }

    /// Reads and classifies one reply; an unknown line is an error.
    pub fn recv(&mut self) -> io::Result<Option<Reply>> {
        let Some(line) = self.recv_line()? else { return Ok(None) };
        Reply::parse(&line).map(Some).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply {line:?}"))
        })
    }

    /// Bounds how long a read waits (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(timeout)
    }
}
