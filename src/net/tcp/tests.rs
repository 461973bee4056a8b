use std::future::Future;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::crypto::{KeySchedule, SystemKey};
use crate::id::{Environment, RmSystem};
use crate::net::handshake::{HELLO_LEN, PROOF_LEN};

/// Deadline for whole test steps: never reached when things work.
const DEADLINE: Duration = Duration::from_secs(30);
/// Handshake timeout of the links under test.
const SETUP: Duration = Duration::from_secs(10);
/// Bytes of one direction's handshake on the wire.
const HANDSHAKE_BYTES: usize = 2 * FRAME_HEADER_LEN + HELLO_LEN + PROOF_LEN;

fn params_with(key: [u8; 32], system: &str) -> LinkParams {
    let system: RmSystem = system.parse().unwrap();
    let env = Environment::live();
    let schedule = KeySchedule::new(&SystemKey::from_bytes(key), system, &env, 86_400);
    LinkParams::new(schedule, system, &env)
}

fn params() -> LinkParams {
    params_with([7; 32], "77,123,89,201192")
}

async fn deadline<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, step).await.expect("test step deadline")
}

/// A listener that runs each accepted handshake in its own task and reports the results.
async fn serve(
    params: LinkParams,
    timeout: Duration,
) -> (SocketAddr, mpsc::Receiver<Result<TcpLink, LinkError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (params, tx) = (params.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(TcpLink::accept(stream, &params, timeout).await).await;
            });
        }
    });
    (addr, rx)
}

async fn next_accepted(
    rx: &mut mpsc::Receiver<Result<TcpLink, LinkError>>,
) -> Result<TcpLink, LinkError> {
    deadline(rx.recv()).await.expect("listener task alive")
}

/// Forwards one client to `upstream`, recording what the client sent and flipping one bit
/// at `flip` (an offset in the client's byte stream) if given.
async fn proxy(upstream: SocketAddr, flip: Option<usize>) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&record);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        });
        let mut offset = 0;
        let mut chunk = vec![0u8; 4096];
        loop {
            let n = match client_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let bytes = &mut chunk[..n];
            if let Some(at) = flip.and_then(|at| at.checked_sub(offset)) {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= 0x04;
                }
            }
            offset += n;
            record.lock().unwrap().extend_from_slice(bytes);
            if server_write.write_all(bytes).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    });
    (addr, recorded)
}

/// Sets up a link through `addr` (a listener from `serve`, or a proxy to one).
async fn link_pair(
    addr: SocketAddr,
    rx: &mut mpsc::Receiver<Result<TcpLink, LinkError>>,
) -> (TcpLink, TcpLink) {
    let client = deadline(TcpLink::connect(addr, &params(), SETUP)).await.unwrap();
    let server = next_accepted(rx).await.unwrap();
    (client, server)
}

fn numbered_frame(from: u8, n: u32) -> Vec<u8> {
    let mut frame = vec![from];
    frame.extend_from_slice(&n.to_be_bytes());
    frame.resize(5 + usize::try_from(n % 700).unwrap(), from);
    frame
}

#[tokio::test]
async fn members_exchange_a_thousand_frames_each_way_in_order() {
    const FRAMES: u32 = 1_000;
    let (addr, mut rx) = serve(params(), SETUP).await;
    let (client, server) = link_pair(addr, &mut rx).await;
    assert!(client.outbound() && !server.outbound());
    assert_eq!(client.session_id(), server.session_id());
    assert_eq!(client.epoch(), server.epoch());
    assert_eq!(client.remote(), addr);

    let sender = |mut writer: TcpLinkWriter, from: u8| {
        tokio::spawn(async move {
            for n in 0..FRAMES {
                writer.send(&numbered_frame(from, n)).await?;
            }
            writer.shutdown().await?;
            Ok::<_, LinkError>(())
        })
    };
    let receiver = |mut reader: TcpLinkReader, from: u8| {
        tokio::spawn(async move {
            for n in 0..FRAMES {
                let frame = reader.recv().await?;
                assert_eq!(frame, Some(numbered_frame(from, n)), "frame {n} from {from}");
            }
            assert_eq!(reader.recv().await?, None, "clean close after the last frame");
            Ok::<_, LinkError>(reader.skipped_frames())
        })
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let tasks = [sender(client_write, 1), sender(server_write, 2)];
    let readers = [receiver(server_read, 1), receiver(client_read, 2)];
    deadline(async {
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for reader in readers {
            assert_eq!(reader.await.unwrap().unwrap(), 0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_wrong_system_key_gets_bad_proof_and_no_link() {
    let (addr, mut rx) = serve(params(), SETUP).await;
    let wrong = params_with([8; 32], "77,123,89,201192");
    let client = deadline(TcpLink::connect(addr, &wrong, SETUP)).await;
    assert!(matches!(client, Err(LinkError::Handshake(HandshakeError::BadProof))), "{client:?}");
    let server = next_accepted(&mut rx).await;
    assert!(matches!(server, Err(LinkError::Handshake(HandshakeError::BadProof))), "{server:?}");
    let err = server.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::NonMemberLink));
}

#[tokio::test]
async fn another_rm_system_is_refused_as_foreign_at_both_ends() {
    let (addr, mut rx) = serve(params(), SETUP).await;
    // Even with the same key bytes: the RmSystem is checked first, and also salts the keys.
    let foreign = params_with([7; 32], "1,2,3,4");
    let client = deadline(TcpLink::connect(addr, &foreign, SETUP)).await.unwrap_err();
    let ours: RmSystem = "77,123,89,201192".parse().unwrap();
    assert!(
        matches!(
            client,
            LinkError::Handshake(HandshakeError::ForeignSystem { system }) if system == ours
        ),
        "{client:?}"
    );
    let server = next_accepted(&mut rx).await.unwrap_err();
    assert_eq!(server.reason(), Some(RejectReason::ForeignSystem), "{server:?}");
}

#[tokio::test]
async fn garbage_and_truncated_handshakes_fail_and_the_listener_keeps_serving() {
    let short = Duration::from_millis(300);
    let (addr, mut rx) = serve(params(), short).await;

    // An HTTP request: its "length" is far over the handshake limit.
    let mut http = deadline(TcpStream::connect(addr)).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let _ = http.shutdown().await;
    let err = next_accepted(&mut rx).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Oversized), "{err:?}");

    // Random bytes, many times.
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..20 {
        let mut bytes = vec![0u8; 1 + usize::try_from(rng.next_u32() % 300).unwrap()];
        rng.fill_bytes(&mut bytes);
        if round % 2 == 0 {
            // Also a plausible header: a handshake tag and a small length.
            bytes.splice(..0, *b"TUBS\x00\x00\x00\x5f");
        }
        let mut client = deadline(TcpStream::connect(addr)).await.unwrap();
        // The listener may refuse before reading all: a reset here is part of the test.
        let _ = client.write_all(&bytes).await;
        let _ = client.shutdown().await;
        assert!(next_accepted(&mut rx).await.is_err(), "round {round}");
    }

    // A hello cut short, then the connection closed.
    let mut rng = StdRng::seed_from_u64(43);
    let (_, hello) = ExpectHello::start(&params(), Role::Initiator, unix_now(), &mut rng);
    let mut hello_frame = Vec::new();
    encode_frame(HANDSHAKE_TAG, &hello, &mut hello_frame).unwrap();
    let mut cut = deadline(TcpStream::connect(addr)).await.unwrap();
    cut.write_all(&hello_frame[..50]).await.unwrap();
    cut.shutdown().await.unwrap();
    let err = next_accepted(&mut rx).await.unwrap_err();
    assert!(matches!(err, LinkError::Truncated { len: 50 }), "{err:?}");
    assert_eq!(err.reason(), Some(RejectReason::Truncated));

    // A whole hello and then silence: that handshake times out, and meanwhile a good
    // client is served.
    let mut stalled = deadline(TcpStream::connect(addr)).await.unwrap();
    stalled.write_all(&hello_frame).await.unwrap();
    let mut client = deadline(TcpLink::connect(addr, &params(), short)).await.unwrap();
    let (first, second) = (next_accepted(&mut rx).await, next_accepted(&mut rx).await);
    let (server, err) = match (first, second) {
        (Ok(server), Err(err)) | (Err(err), Ok(server)) => (server, err),
        other => panic!("expected one link and one timeout: {other:?}"),
    };
    assert!(matches!(err, LinkError::Timeout { .. }), "{err:?}");
    let (mut server_read, _server_write) = server.into_split();
    client.send(b"still serving").await.unwrap();
    assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"still serving");
    drop((http, cut, stalled));
}

#[tokio::test]
async fn a_replayed_handshake_does_not_yield_a_link() {
    let (addr, mut rx) = serve(params(), SETUP).await;
    let (via, recorded) = proxy(addr, None).await;
    let (mut client, server) = link_pair(via, &mut rx).await;
    let (mut server_read, _server_write) = server.into_split();
    client.send(b"captured frame").await.unwrap();
    assert_eq!(deadline(server_read.recv()).await.unwrap().unwrap(), b"captured frame");
    let captured = recorded.lock().unwrap().clone();
    assert!(captured.len() > HANDSHAKE_BYTES, "hello, proof and one frame");

    // The initiator's handshake, replayed to a fresh responder.
    let mut replay = deadline(TcpStream::connect(addr)).await.unwrap();
    replay.write_all(&captured[..HANDSHAKE_BYTES]).await.unwrap();
    replay.shutdown().await.unwrap();
    let err = next_accepted(&mut rx).await.unwrap_err();
    assert!(matches!(err, LinkError::Handshake(HandshakeError::BadProof)), "{err:?}");
    // The replaying client got the fresh responder's hello and proof, then the end.
    let mut answer = Vec::new();
    deadline(replay.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer.len(), HANDSHAKE_BYTES);
}

#[tokio::test]
async fn a_flipped_bit_in_a_sealed_frame_closes_the_link_with_a_decrypt_error() {
    let (addr, mut rx) = serve(params(), SETUP).await;
    // Flip a bit in the ciphertext of the first sealed frame after the handshake.
    let (via, _) = proxy(addr, Some(HANDSHAKE_BYTES + FRAME_HEADER_LEN + 2)).await;
    let (mut client, mut server) = link_pair(via, &mut rx).await;
    client.send(b"tampered in flight").await.unwrap();
    let err = deadline(server.recv()).await.unwrap_err();
    assert!(matches!(err, LinkError::Decrypt), "{err:?}");
    assert_eq!(err.reason(), Some(RejectReason::DecryptFailure));
    // The opener did not advance: the link stays unusable, as it must be dropped.
    client.send(b"next").await.unwrap();
    assert!(matches!(deadline(server.recv()).await, Err(LinkError::Decrypt)));
}

#[tokio::test]
async fn frame_limits_hold_both_ways() {
    let small = params().with_max_frame_len(1_000);
    let (addr, mut rx) = serve(small.clone(), SETUP).await;
    let mut client = deadline(TcpLink::connect(addr, &small, SETUP)).await.unwrap();
    let mut server = next_accepted(&mut rx).await.unwrap();
    let err = client.send(&[0; 1_000 - TAG_LEN + 1]).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Oversized), "refused before sending");
    client.send(&[1; 1_000 - TAG_LEN]).await.unwrap();
    assert_eq!(deadline(server.recv()).await.unwrap().unwrap(), [1; 1_000 - TAG_LEN]);

    // A peer with a larger limit sends more than we take: the link ends at the header.
    let (addr, mut rx) = serve(small, SETUP).await;
    let mut client = deadline(TcpLink::connect(addr, &params(), SETUP)).await.unwrap();
    let mut server = next_accepted(&mut rx).await.unwrap();
    client.send(&[2; 5_000]).await.unwrap();
    let err = deadline(server.recv()).await.unwrap_err();
    assert_eq!(err.reason(), Some(RejectReason::Oversized), "{err:?}");
}

#[tokio::test]
async fn unknown_tags_after_the_handshake_are_skipped_and_counted() {
    let (addr, mut rx) = serve(params(), SETUP).await;
    // A hand-driven initiator that can put any frame on the wire.
    let stream = deadline(TcpStream::connect(addr)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(read, HANDSHAKE_MAX_FRAME_LEN);
    let mut rng = StdRng::seed_from_u64(44);
    let (state, hello) = ExpectHello::start(&params(), Role::Initiator, unix_now(), &mut rng);
    write_handshake(&mut write, &hello).await.unwrap();
    let (state, proof) = state.handle_hello(&frames.next_handshake().await.unwrap()).unwrap();
    write_handshake(&mut write, &proof).await.unwrap();
    let session = state.handle_proof(&frames.next_handshake().await.unwrap()).unwrap();
    let (mut sealer, _) = session.into_parts();

    let mut stream = Vec::new();
    encode_frame(Tag::Unknown(*b"NEW1"), b"from a newer build", &mut stream).unwrap();
    encode_frame(Tag::Tubt, b"not sealed", &mut stream).unwrap();
    let header = frame_header(DATA_TAG, 5 + TAG_LEN).unwrap();
    stream.extend_from_slice(&header);
    sealer.seal_into(&header, b"after", &mut stream).unwrap();
    write.write_all(&stream).await.unwrap();

    let mut server = next_accepted(&mut rx).await.unwrap();
    assert_eq!(deadline(server.recv()).await.unwrap().unwrap(), b"after");
    assert_eq!(server.reader.skipped_frames(), 2);
}

#[tokio::test]
async fn connect_times_out_when_the_peer_never_answers() {
    // Bound and listening (the kernel completes the TCP handshake) but never accepted.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let timeout = Duration::from_millis(200);
    let err = deadline(TcpLink::connect(silent.local_addr().unwrap(), &params(), timeout)).await;
    assert!(matches!(err, Err(LinkError::Timeout { timeout: t }) if t == timeout), "{err:?}");
}
