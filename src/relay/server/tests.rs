//! The driver in-process on 127.0.0.1 with raw QUIC clients: the auth timeout fires through
//! the driver's timer, garbage costs only that connection, and both are counted.

use std::time::Duration;

use super::*;
use crate::wire::relay::RefuseReason;

/// A raw client that has the relay's pinned key but proves nothing.
async fn raw_connect(
    addr: SocketAddr,
    key: [u8; 32],
) -> (quinn::Endpoint, Connection, SendStream, quinn::RecvStream) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(tls::relay_client_crypto(key).unwrap()));
    config.transport_config(Arc::new(transport(1)));
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(addr, "meshnode").unwrap().await.unwrap();
    let (send, recv) = conn.accept_bi().await.unwrap();
    (endpoint, conn, send, recv)
}

/// Every frame until the relay ends the stream, and the connection's close code.
async fn frames_until_closed(
    conn: &Connection,
    recv: &mut quinn::RecvStream,
) -> (Vec<RelayFrame>, Option<u64>) {
    let mut decoder = RelayFrameDecoder::default();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
        buf.extend_from_slice(&chunk.bytes);
        let mut rest = &buf[..];
        while let Ok(Some(frame)) = decoder.decode(&mut rest) {
            frames.push(frame);
        }
        let used = buf.len() - rest.len();
        buf.drain(..used);
    }
    let code = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    };
    (frames, code)
}

async fn status_when(path: &Path, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(status) = status.filter(|s| check(s)) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "status never matched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn silent_and_garbage_clients_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let identity = RelayIdentity::load_or_create(dir.path()).unwrap();
    let key = identity.public_key();
    let store = SledRelayStore::open(&dir.path().join(STORE_DIR)).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let limits = RelayLimits { auth_timeout_ms: 300, ..RelayLimits::default() };
    let cfg = RelayServerConfig { dir: dir.path().to_path_buf(), socket, limits };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        run(cfg, &identity, store, async {
            let _ = stopped.await;
        })
        .await
    });

    // Silent after the challenge: refused for the auth timeout by the driver's timer.
    let (_e1, conn, _send, mut recv) = raw_connect(addr, key).await;
    let (frames, code) = frames_until_closed(&conn, &mut recv).await;
    assert!(matches!(frames.first(), Some(RelayFrame::Challenge(_))), "{frames:?}");
    assert_eq!(frames.last(), Some(&RelayFrame::Refused { reason: RefuseReason::AuthTimeout }));
    assert_eq!(code, Some(u64::from(REFUSAL_CLOSE_BASE) + 3));

    // Garbage in a GNAP frame: malformed, refused, no Welcome.
    let (_e2, conn, mut send, mut recv) = raw_connect(addr, key).await;
    send.write_all(b"GNAP\0\0\0\x03\x02\xff\xff").await.unwrap();
    let (frames, _) = frames_until_closed(&conn, &mut recv).await;
    assert_eq!(frames.last(), Some(&RelayFrame::Refused { reason: RefuseReason::Malformed }));
    assert!(!frames.iter().any(|f| matches!(f, RelayFrame::Welcome(_))));

    // A frame over the limit: the stream is lost, the connection refused.
    let (_e3, conn, mut send, mut recv) = raw_connect(addr, key).await;
    send.write_all(b"GNAP\xff\xff\xff\xff").await.unwrap();
    let (frames, _) = frames_until_closed(&conn, &mut recv).await;
    assert_eq!(frames.last(), Some(&RelayFrame::Refused { reason: RefuseReason::Malformed }));

    let status = status_when(&dir.path().join(STATUS_FILE), |s| {
        s["refused"]["auth_timeout"] == 1 && s["refused"]["malformed"] == 2
    })
    .await;
    assert_eq!(status["running"], true);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!dir.path().join(STATUS_FILE).exists(), "removed at a clean stop");
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_dials_the_relay_from_its_link_socket() {
    use crate::crypto::{KeySchedule, SystemKey};
    use crate::id::{Environment, InstallId, RmSystem};
    use crate::net::handshake::LinkParams;
    use crate::net::quic::QuicEndpoint;
    use crate::net::relay_client::RelayMembership;
    use crate::relay::admitted::{AdmittedFile, SystemEntry};

    let dir = tempfile::tempdir().unwrap();
    let system: RmSystem = "77,123,89,201192".parse().unwrap();
    let env = Environment::live();
    let install = InstallId::random(&mut rand::rngs::OsRng);
    let membership = RelayMembership::new(&install, system, &env).unwrap();
    let verifier = crate::crypto::admission::AdmissionKey::derive(
        &install,
        system,
        crate::wire::EnvironmentTag::of(&env).0,
    )
    .unwrap()
    .verifier();
    let mut admitted = AdmittedFile::default();
    admitted.admit(SystemEntry {
        rmsystem: system.to_string(),
        env: env.to_string(),
        verifiers: vec![verifier.to_string()],
        quota_mib: 1,
        max_payloads: 10,
        ttl_days: 1,
    });
    admitted.write(&dir.path().join(ADMITTED_FILE)).unwrap();
    let identity = RelayIdentity::load_or_create(dir.path()).unwrap();
    let key = identity.public_key();
    let store = SledRelayStore::open(&dir.path().join(STORE_DIR)).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let cfg =
        RelayServerConfig { dir: dir.path().to_path_buf(), socket, limits: RelayLimits::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        run(cfg, &identity, store, async {
            let _ = stopped.await;
        })
        .await
    });

    let schedule = KeySchedule::new(&SystemKey::from_bytes([7; 32]), system, &env, 86_400);
    let params = LinkParams::new(schedule, system, &env);
    let (node, link_addr) = QuicEndpoint::bind("127.0.0.1:0".parse().unwrap(), &params).unwrap();
    let client = node.connect_relay(addr, key, &membership, Duration::from_secs(10)).await.unwrap();
    assert_eq!(client.welcome().observed, link_addr, "the relay sees the link socket");
    client.close();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
