//! Tests of the QUIC link on 127.0.0.1: members, refusals, hostile clients, limits and
//! liveness. Deadlines, not sleeps.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::UdpSocket;

use super::*;
use crate::crypto::{KeySchedule, SystemKey};
use crate::id::{Environment, RmSystem};

/// Deadline for whole test steps: never reached when things work.
const DEADLINE: Duration = Duration::from_secs(30);
/// Setup timeout of outbound links under test.
const SETUP: Duration = Duration::from_secs(10);

fn params_with(key: [u8; 32], system: &str) -> LinkParams {
    let system: RmSystem = system.parse().unwrap();
    let env = Environment::live();
    let schedule = KeySchedule::new(&SystemKey::from_bytes(key), system, &env, 86_400);
    LinkParams::new(schedule, system, &env)
}

fn params() -> LinkParams {
    params_with([7; 32], "77,123,89,201192")
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn endpoint(params: &LinkParams) -> (QuicEndpoint, SocketAddr) {
    QuicEndpoint::bind(loopback(), params).unwrap()
}

async fn deadline<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, step).await.expect("test step deadline")
}

async fn next_accepted(server: &QuicEndpoint) -> Result<QuicLink, QuicLinkError> {
    deadline(server.accept()).await.expect("endpoint accepting")
}

/// A client link from `client` to `server` (at `addr`) and the server's end of it.
async fn link_pair(
    client: &QuicEndpoint,
    server: &QuicEndpoint,
    addr: SocketAddr,
) -> (QuicLink, QuicLink) {
    let client = deadline(client.connect(addr, SETUP)).await.unwrap();
    let server = next_accepted(server).await.unwrap();
    (client, server)
}

fn numbered_frame(from: u8, n: u32) -> Vec<u8> {
    let mut frame = vec![from];
    frame.extend_from_slice(&n.to_be_bytes());
    frame.resize(5 + usize::try_from(n % 700).unwrap(), from);
    frame
}

/// Forwards UDP between one client and `upstream` until `cut` is set, then drops
/// everything both ways: a peer that vanished without a word.
async fn relay(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let outer = UdpSocket::bind(loopback()).await.unwrap();
    let inner = UdpSocket::bind(loopback()).await.unwrap();
    inner.connect(upstream).await.unwrap();
    let addr = outer.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let cutting = Arc::clone(&cut);
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = outer.recv_from(&mut up) => {
                    client = Some(from);
                    if !cutting.load(Ordering::Relaxed) {
                        let _ = inner.send(&up[..n]).await;
                    }
                }
                Ok(n) = inner.recv(&mut down) => {
                    if let (Some(client), false) = (client, cutting.load(Ordering::Relaxed)) {
                        let _ = outer.send_to(&down[..n], client).await;
                    }
                }
            }
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn members_exchange_a_thousand_frames_each_way_in_order() {
    const FRAMES: u32 = 1_000;
    let (server, addr) = endpoint(&params());
    let (client, _) = endpoint(&params());
    let (client_link, server_link) = link_pair(&client, &server, addr).await;
    assert!(client_link.outbound() && !server_link.outbound());
    assert_eq!(client_link.session_id(), server_link.session_id());
    assert_eq!(client_link.epoch(), server_link.epoch());
    assert_eq!(client_link.remote(), addr);

    let sender = |mut writer: QuicLinkWriter, from: u8| {
        tokio::spawn(async move {
            for n in 0..FRAMES {
                writer.send(&numbered_frame(from, n)).await?;
            }
            writer.shutdown().await?;
            Ok::<_, QuicLinkError>(())
        })
    };
    let receiver = |mut reader: QuicLinkReader, from: u8| {
        tokio::spawn(async move {
            for n in 0..FRAMES {
                let frame = reader.recv().await?;
                assert_eq!(frame, Some(numbered_frame(from, n)), "frame {n} from {from}");
            }
            assert_eq!(reader.recv().await?, None, "clean end after the last frame");
            Ok::<_, QuicLinkError>(reader.skipped_frames())
        })
    };
    let (client_read, client_write) = client_link.into_split();
    let (server_read, server_write) = server_link.into_split();
    let readers = [receiver(server_read, 1), receiver(client_read, 2)];
    let senders = [sender(client_write, 1), sender(server_write, 2)];
    deadline(async {
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap(), 0);
        }
        for task in senders {
            task.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_wrong_system_key_gets_bad_proof_and_no_link_at_both_ends() {
    let (server, addr) = endpoint(&params());
    let (client, _) = endpoint(&params_with([8; 32], "77,123,89,201192"));
    let outbound = deadline(client.connect(addr, SETUP)).await.unwrap_err();
    assert!(matches!(outbound, QuicLinkError::Handshake(HandshakeError::BadProof)), "{outbound:?}");
    let inbound = next_accepted(&server).await.unwrap_err();
    assert!(matches!(inbound, QuicLinkError::Handshake(HandshakeError::BadProof)), "{inbound:?}");
    assert_eq!(outbound.reason(), Some(RejectReason::NonMemberLink));
    assert_eq!(inbound.reason(), Some(RejectReason::NonMemberLink));
    assert!(!inbound.is_path_failure());
}

#[tokio::test]
async fn another_rm_system_is_refused_as_foreign_at_both_ends() {
    let (server, addr) = endpoint(&params());
    // Same key bytes: the visible RmSystem is checked first (and also salts the keys).
    let (client, _) = endpoint(&params_with([7; 32], "1,2,3,4"));
    let outbound = deadline(client.connect(addr, SETUP)).await.unwrap_err();
    let ours: RmSystem = "77,123,89,201192".parse().unwrap();
    assert!(
        matches!(
            outbound,
            QuicLinkError::Handshake(HandshakeError::ForeignSystem { system }) if system == ours
        ),
        "{outbound:?}"
    );
    let inbound = next_accepted(&server).await.unwrap_err();
    assert!(
        matches!(
            inbound,
            QuicLinkError::Handshake(HandshakeError::ForeignSystem { system })
                if system == "1,2,3,4".parse().unwrap()
        ),
        "{inbound:?}"
    );
    assert_eq!(inbound.reason(), Some(RejectReason::ForeignSystem));
}

#[tokio::test]
async fn garbage_and_a_silent_tls_client_do_not_stop_the_endpoint() {
    let short = Duration::from_millis(500);
    let timeouts = QuicTimeouts { accept_setup: short, ..QuicTimeouts::default() };
    let (server, addr) = QuicEndpoint::bind_with(loopback(), &params(), timeouts).unwrap();

    // Garbage datagrams, some shaped like a QUIC long header (an Initial of version 1).
    let noise = UdpSocket::bind(loopback()).await.unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..20 {
        let mut bytes = vec![0u8; 1 + usize::try_from(rng.next_u32() % 1_300).unwrap()];
        rng.fill_bytes(&mut bytes);
        if round % 2 == 0 && bytes.len() > 5 {
            bytes[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]);
        }
        noise.send_to(&bytes, addr).await.unwrap();
    }

    // A client that completes TLS and then never opens the stream nor sends its proof.
    let mut silent = quinn::Endpoint::client(loopback()).unwrap();
    let crypto = tls::client_crypto(&tls::provider()).unwrap();
    silent.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let silent_conn = deadline(silent.connect(addr, tls::SERVER_NAME).unwrap()).await.unwrap();

    // Meanwhile a member is served at once.
    let (client, _) = endpoint(&params());
    let mut client_link = deadline(client.connect(addr, SETUP)).await.unwrap();
    let (first, second) = (next_accepted(&server).await, next_accepted(&server).await);
    let (server_link, err) = match (first, second) {
        (Ok(link), Err(err)) | (Err(err), Ok(link)) => (link, err),
        other => panic!("expected one link and one timeout: {other:?}"),
    };
    assert!(matches!(err, QuicLinkError::Timeout { timeout } if timeout == short), "{err:?}");
    // The silent client is told why: the setup-timeout close code.
    let closed = deadline(silent_conn.closed()).await;
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_SETUP_TIMEOUT)),
        "{closed:?}"
    );

    let (mut server_read, _server_write) = server_link.into_split();
    client_link.send(b"still serving").await.unwrap();
    assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"still serving");
}

#[tokio::test]
async fn frame_limits_hold_both_ways() {
    let small = params().with_max_frame_len(1_000);
    let (server, addr) = endpoint(&small);
    let (client, _) = endpoint(&small);
    let (mut client_link, mut server_link) = link_pair(&client, &server, addr).await;
    let err = client_link.send(&[0; 1_001]).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Oversized), "refused before sending");
    client_link.send(&[1; 1_000]).await.unwrap();
    assert_eq!(deadline(server_link.recv()).await.unwrap().unwrap(), [1; 1_000]);

    // A peer with a larger limit sends more than we take: the link ends at the header.
    let (big, _) = endpoint(&params());
    let (mut client_link, mut server_link) = link_pair(&big, &server, addr).await;
    client_link.send(&[2; 5_000]).await.unwrap();
    let err = deadline(server_link.recv()).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Oversized), "{err:?}");
}

#[tokio::test]
async fn unknown_tags_after_the_handshake_are_skipped_and_counted() {
    let (server, addr) = endpoint(&params());
    let (client, _) = endpoint(&params());
    let (mut client_link, mut server_link) = link_pair(&client, &server, addr).await;
    let mut raw = Vec::new();
    encode_frame(Tag::Unknown(*b"NEW1"), b"from a newer build", &mut raw).unwrap();
    encode_frame(HANDSHAKE_TAG, b"a late proof", &mut raw).unwrap();
    client_link.writer.stream.write_all(&raw).await.unwrap();
    client_link.send(b"after").await.unwrap();
    assert_eq!(deadline(server_link.recv()).await.unwrap().unwrap(), b"after");
    assert_eq!(server_link.reader.skipped_frames(), 2);
}

#[tokio::test]
async fn a_closed_end_gives_the_other_a_clean_end_at_once() {
    let (server, addr) = endpoint(&params());
    let (client, _) = endpoint(&params());
    let (mut client_link, server_link) = link_pair(&client, &server, addr).await;
    client_link.send(b"last words").await.unwrap();
    let (mut server_read, mut server_write) = server_link.into_split();
    assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"last words");
    drop(client_link);
    // A clean close arrives well within the idle timeout.
    let end = tokio::time::timeout(IDLE_TIMEOUT, server_read.recv()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    let err = server_write.send(b"to nobody").await.unwrap_err();
    assert!(matches!(err, QuicLinkError::Closed), "{err:?}");
}

#[tokio::test]
async fn a_vanished_peer_is_noticed_within_the_idle_timeout() {
    let idle = Duration::from_millis(1_000);
    let timeouts =
        QuicTimeouts { idle, keep_alive: Duration::from_millis(250), ..QuicTimeouts::default() };
    let (server, addr) = QuicEndpoint::bind_with(loopback(), &params(), timeouts).unwrap();
    let (client, _) = QuicEndpoint::bind_with(loopback(), &params(), timeouts).unwrap();
    let (via, cut) = relay(addr).await;
    let (mut client_link, mut server_link) = link_pair(&client, &server, via).await;
    client_link.send(b"through the relay").await.unwrap();
    assert_eq!(deadline(server_link.recv()).await.unwrap().unwrap(), b"through the relay");

    // Idle for several keep-alive intervals: the link stays up.
    let quiet = tokio::time::timeout(3 * idle, server_link.recv()).await;
    assert!(quiet.is_err(), "keep-alives hold an idle link: {quiet:?}");

    cut.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let limit = idle * 3;
    let err = tokio::time::timeout(limit, server_link.recv()).await.unwrap().unwrap_err();
    assert!(err.is_path_failure(), "{err:?}");
    let err = tokio::time::timeout(limit, client_link.recv()).await.unwrap().unwrap_err();
    assert!(err.is_path_failure(), "{err:?}");
    assert!(started.elapsed() < limit, "noticed after {:?}", started.elapsed());
}

#[tokio::test]
async fn connect_to_a_silent_port_is_unreachable() {
    // Bound, so no ICMP error comes back: the datagrams just go unanswered.
    let silent = UdpSocket::bind(loopback()).await.unwrap();
    let (client, _) = endpoint(&params());
    let timeout = Duration::from_millis(300);
    let err = deadline(client.connect(silent.local_addr().unwrap(), timeout)).await;
    let err = err.unwrap_err();
    assert!(matches!(err, QuicLinkError::Unreachable { timeout: t } if t == timeout), "{err:?}");
    assert!(err.is_path_failure());
    assert_eq!(err.reason(), None);
}

#[test]
fn refusal_codes_are_distinct_and_round_trip() {
    for reason in RejectReason::ALL {
        let code = refusal_code(Some(reason));
        assert_eq!(refusal_reason(code), Some(reason));
    }
    let mut codes: Vec<u32> = REFUSAL_CODES.iter().map(|(_, code)| *code).collect();
    codes.extend([CLOSE_DONE, CLOSE_SETUP_TIMEOUT, CLOSE_REFUSED]);
    let count = codes.len();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), count);
    assert_eq!(refusal_code(None), VarInt::from_u32(CLOSE_REFUSED));
    assert_eq!(refusal_reason(VarInt::from_u32(CLOSE_REFUSED)), None);
}

/// Hole punching sends 8-byte datagrams (`00 'M' 'N' 'P'` and 4 random bytes) from a copy of
/// the QUIC socket's descriptor, to and from endpoints that also carry links: quinn must drop
/// them unread (the fixed bit is clear) and keep serving, both ways.
#[tokio::test]
async fn punch_datagrams_are_ignored_by_quic_endpoints() {
    let bind = |()| {
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        let copy = socket.try_clone().unwrap();
        let (endpoint, addr) =
            QuicEndpoint::with_socket(socket, &params(), QuicTimeouts::default()).unwrap();
        (endpoint, addr, copy)
    };
    let (server, server_addr, server_copy) = bind(());
    let (client, client_addr, client_copy) = bind(());
    let punch = |from: &std::net::UdpSocket, to: SocketAddr| {
        for i in 0..3u8 {
            from.send_to(&[0, b'M', b'N', b'P', i, 7, 7, 7], to).unwrap();
        }
    };
    punch(&client_copy, server_addr);
    punch(&server_copy, client_addr);
    let (mut client_link, server_link) = link_pair(&client, &server, server_addr).await;
    // And once the link is up.
    punch(&client_copy, server_addr);
    punch(&server_copy, client_addr);
    let (mut server_read, mut server_write) = server_link.into_split();
    client_link.send(b"after the punches").await.unwrap();
    assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"after the punches");
    server_write.send(b"and back").await.unwrap();
    assert_eq!(deadline(client_link.recv()).await.unwrap().unwrap(), b"and back");
}
