//! `meshnode subscribe`: print the units delivered to this node as JSON lines, through the
//! running node's control socket (see [`crate::control`]).
//!
//! Each line is written to stdout and flushed before it is acknowledged, so the node's cursor
//! moves only past lines already written. Lines a reconnect brings again (the node restarted
//! before it read an acknowledgement) are acknowledged but not printed twice. On SIGINT or
//! SIGTERM the subscriber waits (briefly) for the node to confirm its acknowledgements, so a
//! clean stop and start of either side prints each unit exactly once; after a kill -9 of the
//! subscriber, the one line it printed and had not acknowledged comes again (consumers drop it
//! by its origin and seq). A consumer may see a last line cut short (without its newline), after
//! a kill -9 or a stop while its pipe was full; that line is not acknowledged and comes again,
//! and the consumer drops the cut one.
//!
//! It does not start a node, and does not read the store itself.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::json;

use crate::control::client::{ControlClient, Reply};
use crate::control::protocol;

/// How often a waiting read looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// How long to retry while the node reports another subscriber.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping subscriber waits for the node to confirm its acknowledgements.
const CONFIRM_WAIT: Duration = Duration::from_secs(3);

static STOP: AtomicBool = AtomicBool::new(false);

/// Arguments of `meshnode subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Replay every unit of other origins this node holds, from seq 1 of each origin, including
    /// units already acknowledged (acknowledging those again does not move the cursor back).
    /// Without it, each origin starts at its first unit not yet acknowledged. Applies to the
    /// first connection only: after the node restarts, delivery resumes at the cursor.
    #[arg(long)]
    from_start: bool,
}

enum End {
    /// Stop requested, or stdout closed.
    Stopped,
    /// The node closed the connection (it stopped).
    NodeGone,
}

pub(super) fn run(dir: &Path, args: SubscribeArgs) -> anyhow::Result<()> {
    install_signal_handlers();
    let mut node = ControlClient::connect(dir, super::submit::STARTING_NODE_WAIT)?.ok_or_else(|| {
        anyhow!(
            "no node is running in {0}; start `meshnode run --data-dir {0}` first (units are delivered by the running node)",
            dir.display()
        )
    })?;
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut from_start = args.from_start;
    loop {
        match session(&mut node, from_start, &mut printed)? {
            End::Stopped => return Ok(()),
            End::NodeGone => {
                eprintln!("meshnode subscribe: the node stopped; waiting for it to come back");
                from_start = false;
                match wait_for_node(dir)? {
                    Some(again) => node = again,
                    None => return Ok(()),
                }
            }
        }
    }
}

/// One connection: subscribe, then print and acknowledge until the node goes or we stop.
fn session(
    node: &mut ControlClient,
    from_start: bool,
    printed: &mut HashMap<String, u64>,
) -> anyhow::Result<End> {
    node.set_read_timeout(Some(POLL)).context("control socket")?;
    let request = json!({"op": "subscribe", "from_start": from_start}).to_string();
    if node.send(&request).is_err() {
        return Ok(End::NodeGone);
    }
    let busy_until = Instant::now() + BUSY_WAIT;
    let mut unconfirmed = 0u64;
    let mut stop_deadline = None;
    loop {
        if STOP.load(Ordering::SeqCst) {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + CONFIRM_WAIT);
            if unconfirmed == 0 || Instant::now() >= deadline {
                return Ok(End::Stopped);
            }
        }
        let reply = match node.recv() {
            Ok(Some(reply)) => reply,
            Ok(None) => return Ok(End::NodeGone),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if gone(&e) => return Ok(End::NodeGone),
            Err(e) => return Err(anyhow::Error::new(e).context("control socket")),
        };
        match reply {
            Reply::Subscribed => {}
            Reply::Acked => unconfirmed = unconfirmed.saturating_sub(1),
            Reply::Error { code, .. }
                if code.as_deref() == Some(protocol::SUBSCRIBER_BUSY)
                    && Instant::now() < busy_until =>
            {
                // Most likely a subscriber that just died, whose end the node has not read yet.
                std::thread::sleep(POLL / 4);
                if node.send(&request).is_err() {
                    return Ok(End::NodeGone);
                }
            }
            Reply::Error { message, .. } => bail!("the node refused: {message}"),
            Reply::Unit { line, origin, seq } => {
                if STOP.load(Ordering::SeqCst) {
                    // Not printed, not acknowledged: it is delivered again next time.
                    continue;
                }
                if printed.get(&origin).is_none_or(|p| seq > *p) {
                    if let Printed::Stopped = print(&line) {
                        return Ok(End::Stopped);
                    }
                    printed.insert(origin.clone(), seq);
                }
                let ack = json!({"op": "ack", "origin": origin, "seq": seq}).to_string();
                if node.send(&ack).is_err() {
                    return Ok(End::NodeGone);
                }
                unconfirmed += 1;
            }
            other => bail!("the node sent {other:?} on a subscription"),
        }
    }
}

/// What became of a line handed to [`print()`].
enum Printed {
    /// Written whole: acknowledge it.
    Whole,
    /// Not written, or cut short by a stop while stdout was full: not acknowledged, so it comes
    /// again next time (a consumer drops a last line without its newline).
    Stopped,
}

/// Writes one line to stdout with `write(2)` (no buffering in between, so "written" means the
/// consumer's pipe or file has it).
///
/// A consumer that stops reading must not keep the subscriber from stopping: the write waits in
/// `poll(2)` for room, looking at [`STOP`] every [`POLL`], and the stop signals are installed
/// without `SA_RESTART`, so a long line blocked mid-write returns early too. A line stopped that
/// way is left unacknowledged; a line written whole is always acknowledged, even when the stop
/// arrives just after it.
fn print(line: &str) -> Printed {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut rest = &buf[..];
    while !rest.is_empty() {
        if STOP.load(Ordering::SeqCst) {
            return Printed::Stopped;
        }
        let mut out = libc::pollfd { fd: libc::STDOUT_FILENO, events: libc::POLLOUT, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut out, 1, POLL.as_millis() as libc::c_int) } == 0 {
            continue;
        }
        // Ready (a pipe then takes a line of up to PIPE_BUF whole), or an error the write reports.
        // SAFETY: writes from a live, initialised buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // stdout is gone (the consumer stopped).
            return Printed::Stopped;
        }
        rest = &rest[n as usize..];
    }
    Printed::Whole
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    )
}

/// Waits for the node to come back; `None` when asked to stop first.
fn wait_for_node(dir: &Path) -> anyhow::Result<Option<ControlClient>> {
    while !STOP.load(Ordering::SeqCst) {
        if let Some(node) = ControlClient::connect(dir, Duration::ZERO)? {
            return Ok(Some(node));
        }
        std::thread::sleep(POLL);
    }
    Ok(None)
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`]. No `SA_RESTART`: a write blocked on a full stdout returns
/// `EINTR` instead of waiting for a consumer that may never read again.
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler only stores
        // to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
