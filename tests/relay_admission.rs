//! `meshnode relay` on 127.0.0.1, driven by the library's relay client: members are admitted
//! and told their observed address, outsiders are refused and counted, a payload survives a
//! kill -9 of the relay, and a post over quota is refused and counted.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{cmd, free_port, init, ok, s, signal, NODE_DEADLINE};
use meshnode::datadir::read_system_key;
use meshnode::net::relay_client::{RelayClient, RelayClientError, RelayMembership};
use meshnode::wire::relay::{Mailbox, PostRefuseReason, RefuseReason, RelayFrame};
use meshnode::InstallId;

const SYSTEM: &str = "77,123,89,201192";
const MAILBOX: Mailbox = Mailbox([0x42; 16]);
const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `meshnode relay`, killed when dropped.
struct Relay {
    child: std::process::Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Starts the relay on `listen`; returns once a status written by this process is there.
    fn start(dir: &Path, listen: SocketAddr) -> Relay {
        let log = dir.with_extension("log");
        let child = cmd(&["relay", "--data-dir", s(dir), "--listen", &listen.to_string()])
            .env("MESHNODE_LOG", "meshnode=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
            .spawn()
            .expect("start meshnode relay");
        let relay = Relay { child, dir: dir.to_path_buf(), log };
        let pid = u64::from(relay.child.id());
        relay.wait("the relay's status file", |st| st["running"] == true && st["pid"] == pid);
        relay
    }

    /// `meshnode relay --status --json`.
    fn status(&self) -> serde_json::Value {
        let out = ok(&["relay", "--data-dir", s(&self.dir), "--status", "--json"]);
        serde_json::from_str(&out).expect("relay status json")
    }

    /// Polls the status until `check` holds, or fails with the log after the deadline.
    fn wait(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + NODE_DEADLINE;
        loop {
            let out =
                cmd(&["relay", "--data-dir", s(&self.dir), "--status", "--json"]).output().unwrap();
            if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if check(&status) {
                    return status;
                }
                if std::time::Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; status {status:#}\nlog:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Relay::wait`] inside the test's runtime: sleeps between polls without blocking the
    /// runtime, so the test's own relay connections keep sending meanwhile.
    async fn wait_async(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = std::time::Instant::now() + NODE_DEADLINE;
        loop {
            let out =
                cmd(&["relay", "--data-dir", s(&self.dir), "--status", "--json"]).output().unwrap();
            let status = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok();
            if status.as_ref().is_some_and(&check) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; status {status:?}\nlog:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9, and wait until the process is gone.
    fn kill9(mut self) {
        signal(&self.child, libc::SIGKILL);
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn key(&self) -> [u8; 32] {
        let key = self.status()["key"].as_str().unwrap().to_string();
        hex::decode(key).unwrap().try_into().unwrap()
    }
}

/// Two members of system A (the second joined from a join file), a node of system B, and a
/// relay directory admitting A with at most `max_payloads` payloads.
struct Setup {
    _tmp: tempfile::TempDir,
    a1: PathBuf,
    a2: PathBuf,
    b: PathBuf,
    relay_dir: PathBuf,
}

fn setup(max_payloads: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let a1 = init(tmp.path(), "a1", &["--system", SYSTEM]);
    let join = tmp.path().join("a.join");
    ok(&["key", "export", "--data-dir", s(&a1), "--out", s(&join)]);
    let a2 = init(tmp.path(), "a2", &["--join", s(&join)]);
    let b = init(tmp.path(), "b", &[]);
    let relay_dir = tmp.path().join("relay");
    // The operator runs the line a member prints.
    let line = ok(&["key", "relay-verifier", "--data-dir", s(&a1)]);
    assert!(line.starts_with("meshnode relay admit "), "{line}");
    let mut args: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|w| if w == "RELAY_DIR" { s(&relay_dir).to_string() } else { w.to_string() })
        .collect();
    args.extend(["--max-payloads".to_string(), max_payloads.to_string()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    Setup { _tmp: tmp, a1, a2, b, relay_dir }
}

fn membership(dir: &Path) -> RelayMembership {
    RelayMembership::of(&read_system_key(dir).unwrap()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn refusal(result: Result<RelayClient, RelayClientError>) -> Option<RefuseReason> {
    match result {
        Ok(client) => panic!("admitted, observed {}", client.welcome().observed),
        Err(RelayClientError::Refused { reason }) => reason,
        Err(other) => panic!("expected a refusal, got {other}"),
    }
}

/// The next `Posted`/`PostRefused` answers until every seq in `seqs` is answered.
async fn answers(
    client: &mut RelayClient,
    seqs: &[u32],
) -> std::collections::BTreeMap<u32, Option<PostRefuseReason>> {
    let mut out = std::collections::BTreeMap::new();
    while seqs.iter().any(|s| !out.contains_key(s)) {
        match tokio::time::timeout(TIMEOUT, client.recv()).await.expect("answer in time") {
            Ok(Some(RelayFrame::Posted { seqs })) => {
                out.extend(seqs.into_iter().map(|s| (s, None)))
            }
            Ok(Some(RelayFrame::PostRefused { seq, reason })) => {
                out.insert(seq, Some(reason));
            }
            Ok(Some(_)) => {}
            other => panic!("relay connection ended: {other:?}"),
        }
    }
    out
}

fn system_status(status: &serde_json::Value) -> serde_json::Value {
    status["systems"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["rmsystem"] == SYSTEM))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn member_is_admitted_with_its_observed_address_and_outsiders_are_refused_and_counted() {
    let setup = setup(100);
    let relay = Relay::start(&setup.relay_dir, listen());
    let addr: SocketAddr = relay.status()["listen"].as_str().unwrap().parse().unwrap();
    let key = relay.key();
    let secrets = read_system_key(&setup.a1).unwrap();
    runtime().block_on(async {
        let member =
            RelayClient::connect(addr, key, &membership(&setup.a1), TIMEOUT).await.unwrap();
        let local = member.local_addr().unwrap();
        let observed = member.welcome().observed;
        assert_eq!(
            (observed.ip().to_string(), observed.port()),
            ("127.0.0.1".into(), local.port())
        );
        // A node of another system.
        let other = RelayClient::connect(addr, key, &membership(&setup.b), TIMEOUT).await;
        assert_eq!(refusal(other), Some(RefuseReason::UnknownSystem));
        // A client that knows only the RmSystem (and environment), not the install id.
        let random = InstallId::random(&mut rand::rngs::OsRng);
        let bare = RelayMembership::new(&random, secrets.rmsystem, &secrets.env).unwrap();
        let bare = RelayClient::connect(addr, key, &bare, TIMEOUT).await;
        assert_eq!(refusal(bare), Some(RefuseReason::BadProof));
        // A client pinning another key never gets as far as the proof.
        let wrong = RelayClient::connect(addr, [7; 32], &membership(&setup.a1), TIMEOUT).await;
        assert!(
            matches!(wrong, Err(RelayClientError::Connection(_))),
            "refused by TLS, before any frame: {wrong:?}"
        );
        // After a rebinding (a new NAT mapping) the relay tells the member its new address.
        let mut member = member;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let moved = socket.local_addr().unwrap();
        member.rebind(socket).unwrap();
        member.subscribe(vec![MAILBOX]).await.unwrap();
        let observed = loop {
            match tokio::time::timeout(TIMEOUT, member.recv()).await.expect("observed in time") {
                Ok(Some(RelayFrame::Observed { addr })) => break addr,
                Ok(Some(_)) => continue,
                other => panic!("relay connection ended: {other:?}"),
            }
        };
        assert_eq!(observed, moved);
        member.close();
    });
    let status = relay.wait("the refusals counted", |st| {
        st["refused"]["unknown_system"] == 1 && st["refused"]["bad_proof"] == 1
    });
    assert_eq!(system_status(&status)["counters"]["bad_proof"], 1, "{status:#}");
    let table = ok(&["relay", "--data-dir", s(&setup.relay_dir), "--status"]);
    assert!(table.contains("unknown system 1") && table.contains(SYSTEM), "{table}");
}

#[test]
fn payload_posted_by_one_member_survives_kill9_and_is_taken_by_another() {
    let setup = setup(100);
    let listen = listen();
    let relay = Relay::start(&setup.relay_dir, listen);
    let key = relay.key();
    let rt = runtime();
    rt.block_on(async {
        let mut poster =
            RelayClient::connect(listen, key, &membership(&setup.a1), TIMEOUT).await.unwrap();
        poster.post(1, MAILBOX, 3600, vec![0xab; 1024]).await.unwrap();
        assert_eq!(answers(&mut poster, &[1]).await[&1], None, "posted (durable)");
    });
    relay.kill9();
    let relay = Relay::start(&setup.relay_dir, listen);
    let status = relay.status();
    let usage = &system_status(&status)["usage"];
    assert_eq!(
        (&usage["count"], &usage["bytes"]),
        (&1.into(), &1024.into()),
        "rebuilt at open: {status:#}"
    );
    assert!(usage["oldest_age_secs"].as_u64().is_some(), "{status:#}");
    rt.block_on(async {
        let mut taker =
            RelayClient::connect(listen, key, &membership(&setup.a2), TIMEOUT).await.unwrap();
        taker.subscribe(vec![MAILBOX]).await.unwrap();
        let delivered =
            tokio::time::timeout(TIMEOUT, taker.next_delivery()).await.unwrap().unwrap();
        assert_eq!((delivered.mailbox, delivered.payload), (MAILBOX, vec![0xab; 1024]));
        taker.taken(vec![delivered.id]).await.unwrap();
        // Keep the connection until the relay has processed the Taken.
        relay.wait_async("the payload taken", |st| system_status(st)["usage"]["count"] == 0).await;
    });
}

#[test]
fn post_over_quota_is_refused_and_counted() {
    let setup = setup(2);
    let listen = listen();
    let relay = Relay::start(&setup.relay_dir, listen);
    let key = relay.key();
    runtime().block_on(async {
        let mut member =
            RelayClient::connect(listen, key, &membership(&setup.a1), TIMEOUT).await.unwrap();
        for seq in 1..=3 {
            member.post(seq, MAILBOX, 3600, vec![seq as u8; 1024]).await.unwrap();
        }
        let answers = answers(&mut member, &[1, 2, 3]).await;
        assert_eq!(answers[&1], None);
        assert_eq!(answers[&2], None);
        assert_eq!(answers[&3], Some(PostRefuseReason::QuotaFull));
    });
    let status = relay.wait("the quota refusal counted", |st| {
        system_status(st)["counters"]["quota_refusals"] == 1
    });
    assert_eq!(system_status(&status)["usage"]["count"], 2, "{status:#}");
    // A clean stop removes the snapshot; --status then reads the store itself.
    let mut relay = relay;
    signal(&relay.child, libc::SIGTERM);
    let exit = relay.child.wait().unwrap();
    assert!(exit.success(), "relay exited with {exit}: {}", relay.log_text());
    assert!(!setup.relay_dir.join("run/status.json").exists());
    let status = relay.status();
    assert_eq!(status["running"], false, "{status:#}");
    assert_eq!(system_status(&status)["usage"]["count"], 2, "{status:#}");
}

#[test]
fn a_node_data_directory_is_never_a_relay() {
    let setup = setup(1);
    let err = common::fails(&["relay", "--data-dir", s(&setup.a1), "--listen", "127.0.0.1:0"]);
    assert!(err.contains("a relay never holds one"), "{err}");
    assert!(!setup.a1.join("relay.key").exists());
    let err = common::fails(&["relay", "--data-dir", s(&setup.b), "--status"]);
    assert!(err.contains("never holds"), "{err}");
}

#[test]
fn a_running_relay_follows_admit_and_revoke() {
    let setup = setup(10);
    let relay = Relay::start(&setup.relay_dir, listen());
    let addr: SocketAddr = relay.status()["listen"].as_str().unwrap().parse().unwrap();
    let key = relay.key();
    let line = ok(&["key", "relay-verifier", "--data-dir", s(&setup.b)]);
    let verifier = line.split_whitespace().last().unwrap().to_string();
    let system_b = read_system_key(&setup.b).unwrap().rmsystem.to_string();
    let relay_dir = s(&setup.relay_dir).to_string();
    let admin = |verb: &str| {
        ok(&["relay", verb, "--data-dir", &relay_dir, "--system", &system_b, "--env", "live"]
            .iter()
            .copied()
            .chain(if verb == "admit" { vec!["--verifier", verifier.as_str()] } else { vec![] })
            .collect::<Vec<_>>());
    };
    runtime().block_on(async {
        admin("admit");
        relay
            .wait_async("system b admitted", |st| {
                st["systems"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["rmsystem"] == system_b))
            })
            .await;
        let b = RelayClient::connect(addr, key, &membership(&setup.b), TIMEOUT).await.unwrap();
        b.close();
        admin("revoke");
        relay
            .wait_async("system b revoked", |st| {
                st["systems"].as_array().is_some_and(|a| {
                    a.iter().all(|x| x["rmsystem"] != system_b || x["admitted"] == false)
                })
            })
            .await;
        let b = RelayClient::connect(addr, key, &membership(&setup.b), TIMEOUT).await;
        assert_eq!(refusal(b), Some(RefuseReason::UnknownSystem));
    });
}
