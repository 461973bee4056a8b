use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::crypto::SystemKey;

const NOW: u64 = 1_700_000_000;

fn params_with(key: [u8; 32], system: &str, env: &str) -> LinkParams {
    let system: RmSystem = system.parse().unwrap();
    let env: Environment = env.parse().unwrap();
    let schedule = KeySchedule::new(&SystemKey::from_bytes(key), system, &env, 86_400);
    LinkParams::new(schedule, system, &env)
}

fn params() -> LinkParams {
    params_with([7; 32], "77,123,89,201192", "live")
}

struct Transcript {
    hello_i: Vec<u8>,
    proof_i: Vec<u8>,
}

/// Runs a whole handshake; returns both ends' results and the initiator's messages.
fn run(
    initiator: &LinkParams,
    responder: &LinkParams,
    now_i: u64,
    now_r: u64,
    seed: u64,
) -> (Result<LinkSession, HandshakeError>, Result<LinkSession, HandshakeError>, Transcript) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (i, hello_i) = ExpectHello::start(initiator, Role::Initiator, now_i, &mut rng);
    let (r, hello_r) = ExpectHello::start(responder, Role::Responder, now_r, &mut rng);
    let mut transcript = Transcript { hello_i: hello_i.clone(), proof_i: Vec::new() };
    let i = i.handle_hello(&hello_r);
    let r = r.handle_hello(&hello_i);
    let (i, r) = match (i, r) {
        (Ok((i, proof_i)), Ok((r, proof_r))) => {
            transcript.proof_i = proof_i.clone();
            (i.handle_proof(&proof_r), r.handle_proof(&proof_i))
        }
        (i, r) => {
            let half = |_| -> LinkSession { panic!("one end passed the hello, the other not") };
            (i.map(half), r.map(half))
        }
    };
    (i, r, transcript)
}

fn run_ok(seed: u64) -> (LinkSession, LinkSession) {
    let (i, r, _) = run(&params(), &params(), NOW, NOW, seed);
    (i.unwrap(), r.unwrap())
}

#[test]
fn members_agree_on_keys_in_both_directions() {
    let (i, r) = run_ok(1);
    assert_eq!(i.transcript_hash(), r.transcript_hash());
    assert_eq!(i.epoch(), r.epoch());
    let (mut i_seal, mut i_open) = i.into_parts();
    let (mut r_seal, mut r_open) = r.into_parts();
    for n in 0..5u8 {
        let sealed = i_seal.seal(b"aad", &[n; 10]).unwrap();
        assert_eq!(sealed.len(), 10 + TAG_LEN);
        assert_eq!(r_open.open(b"aad", &sealed).unwrap(), [n; 10]);
        let sealed = r_seal.seal(b"aad", &[n; 3]).unwrap();
        assert_eq!(i_open.open(b"aad", &sealed).unwrap(), [n; 3]);
    }
    // The directions use different keys: our own frame does not open as the peer's.
    let (mut i_seal, _) = run_ok(2).0.into_parts();
    let (_, mut i_open) = run_ok(2).0.into_parts();
    assert_eq!(i_open.open(b"", &i_seal.seal(b"", b"x").unwrap()), Err(CryptoError::Decrypt));
}

#[test]
fn sessions_are_fresh() {
    let (a, _) = run_ok(1);
    let (b, _) = run_ok(2);
    assert_ne!(a.transcript_hash(), b.transcript_hash());
    let (mut a_seal, _) = a.into_parts();
    let (_, mut b_open) = run_ok(2).1.into_parts();
    let sealed = a_seal.seal(b"", b"hello").unwrap();
    assert_eq!(b_open.open(b"", &sealed), Err(CryptoError::Decrypt));
}

#[test]
fn replayed_reordered_and_tampered_frames_do_not_open() {
    let (i, r) = run_ok(3);
    let (mut seal, _) = i.into_parts();
    let (_, mut open) = r.into_parts();
    let first = seal.seal(b"h", b"one").unwrap();
    let second = seal.seal(b"h", b"two").unwrap();
    assert_eq!(open.open(b"h", &second), Err(CryptoError::Decrypt), "reordered");
    assert_eq!(open.open(b"h", &first).unwrap(), b"one");
    assert_eq!(open.open(b"h", &first), Err(CryptoError::Decrypt), "replayed");
    assert_eq!(open.open(b"x", &second), Err(CryptoError::Decrypt), "other aad");
    let mut flipped = second.clone();
    flipped[1] ^= 0x10;
    assert_eq!(open.open(b"h", &flipped), Err(CryptoError::Decrypt), "tampered");
    assert_eq!(open.open(b"h", &second[..5]), Err(CryptoError::Truncated { len: 5 }));
    assert_eq!(open.open(b"h", &second).unwrap(), b"two");
}

#[test]
fn wrong_system_key_is_a_bad_proof_at_both_ends() {
    let other = params_with([8; 32], "77,123,89,201192", "live");
    let (i, r, _) = run(&other, &params(), NOW, NOW, 4);
    assert_eq!(i.unwrap_err(), HandshakeError::BadProof);
    assert_eq!(r.unwrap_err(), HandshakeError::BadProof);
    assert_eq!(HandshakeError::BadProof.reason(), RejectReason::NonMemberLink);
}

#[test]
fn visible_refusals() {
    let foreign = params_with([7; 32], "1,2,3,4", "live");
    let (i, r, _) = run(&foreign, &params(), NOW, NOW, 5);
    let expected = "77,123,89,201192".parse().unwrap();
    assert_eq!(i.unwrap_err(), HandshakeError::ForeignSystem { system: expected });
    let r = r.unwrap_err();
    assert_eq!(r, HandshakeError::ForeignSystem { system: "1,2,3,4".parse().unwrap() });
    assert_eq!(r.reason(), RejectReason::ForeignSystem);

    let test_env = params_with([7; 32], "77,123,89,201192", "test");
    let (_, r, _) = run(&test_env, &params(), NOW, NOW, 6);
    let r = r.unwrap_err();
    assert_eq!(r.reason(), RejectReason::ForeignEnvironment);

    // The default window is 2 epochs of a day either side.
    let (i, r, _) = run(&params(), &params(), NOW, NOW + 2 * 86_400, 7);
    assert!(i.is_ok() && r.is_ok(), "within the window");
    let (i, r, _) = run(&params(), &params(), NOW, NOW + 3 * 86_400, 7);
    let current = NOW / 86_400;
    assert_eq!(
        i.unwrap_err(),
        HandshakeError::StaleEpoch { epoch: current + 3, current },
        "initiator"
    );
    assert_eq!(r.unwrap_err().reason(), RejectReason::StaleEpoch);
}

#[test]
fn replayed_handshake_does_not_yield_a_link() {
    let (i, r, captured) = run(&params(), &params(), NOW, NOW, 8);
    assert!(i.is_ok() && r.is_ok());
    // A fresh responder: the old hello passes the visible checks, the old proof does not.
    let mut rng = StdRng::seed_from_u64(9);
    let (fresh, _) = ExpectHello::start(&params(), Role::Responder, NOW, &mut rng);
    let (fresh, _) = fresh.handle_hello(&captured.hello_i).unwrap();
    assert_eq!(fresh.handle_proof(&captured.proof_i).unwrap_err(), HandshakeError::BadProof);
}

#[test]
fn reflected_messages_are_refused() {
    let mut rng = StdRng::seed_from_u64(10);
    let (i, hello_i) = ExpectHello::start(&params(), Role::Initiator, NOW, &mut rng);
    // Our own hello sent back has the wrong role.
    assert!(matches!(i.handle_hello(&hello_i), Err(HandshakeError::Malformed { .. })));
    // A responder hello with our ephemeral, then our own proof sent back.
    let (i, hello_i) = ExpectHello::start(&params(), Role::Initiator, NOW, &mut rng);
    let mut hello_r = hello_i.clone();
    hello_r[2] = 1;
    let (i, proof_i) = i.handle_hello(&hello_r).unwrap();
    assert_eq!(i.handle_proof(&proof_i).unwrap_err(), HandshakeError::BadProof);
}

#[test]
fn low_order_ephemeral_is_refused() {
    let mut rng = StdRng::seed_from_u64(11);
    let (i, _) = ExpectHello::start(&params(), Role::Initiator, NOW, &mut rng);
    let (_, hello_r) = ExpectHello::start(&params(), Role::Responder, NOW, &mut rng);
    let mut hello_r = hello_r;
    hello_r[HELLO_LEN - 32..].fill(0);
    assert_eq!(i.handle_hello(&hello_r).unwrap_err(), HandshakeError::Malformed { len: 95 });
}

#[test]
fn hello_known_bytes_and_versions() {
    let hello = Hello {
        role: Role::Responder,
        system: "1,2,3,4".parse().unwrap(),
        environment: EnvironmentTag([0xaa, 0xbb, 0xcc, 0xdd]),
        epoch: Epoch(0x0102),
        nonce: [0x11; 32],
        ephemeral: [0x22; 32],
    };
    let bytes = hello.encode();
    assert_eq!(bytes.len(), HELLO_LEN);
    assert_eq!(HELLO_LEN, 95);
    assert_eq!(
        hex::encode(&bytes[..31]),
        concat!("010101", "00000001000000020000000300000004", "aabbccdd", "0000000000000102")
    );
    assert_eq!(&bytes[31..63], &[0x11; 32]);
    assert_eq!(&bytes[63..], &[0x22; 32]);
    assert_eq!(Hello::decode(&bytes), Ok(hello));

    let mut newer = bytes.to_vec();
    newer[1] = 2;
    newer.push(0);
    assert_eq!(Hello::decode(&newer), Err(HandshakeError::UnsupportedVersion { version: 2 }));
    assert_eq!(
        HandshakeError::UnsupportedVersion { version: 2 }.reason(),
        RejectReason::UnsupportedVersion
    );
    let mut bad_role = bytes;
    bad_role[2] = 9;
    assert_eq!(Hello::decode(&bad_role), Err(HandshakeError::Malformed { len: 95 }));
    assert_eq!(Hello::decode(&bytes[..94]), Err(HandshakeError::Malformed { len: 94 }));
    assert_eq!(HandshakeError::Malformed { len: 0 }.reason(), RejectReason::Malformed);
}

#[test]
fn exporter_proofs_bind_membership_to_the_tls_session() {
    let exporter = [0x5a; EXPORTER_LEN];
    let client = proof_for_exporter(&params(), Role::Initiator, NOW, &exporter);
    let server = proof_for_exporter(&params(), Role::Responder, NOW, &exporter);
    assert_eq!(client.len(), EXPORTER_PROOF_LEN);
    let epoch = Epoch(NOW / 86_400);
    assert_eq!(
        verify_exporter_proof(&params(), Role::Responder, NOW, &exporter, &client),
        Ok(epoch)
    );
    assert_eq!(
        verify_exporter_proof(&params(), Role::Initiator, NOW, &exporter, &server),
        Ok(epoch)
    );
    // Replayed into another TLS session, reflected, or made with another key: refused.
    let other_session = [0x5b; EXPORTER_LEN];
    let verify = |role, exporter: &[u8], bytes: &[u8]| {
        verify_exporter_proof(&params(), role, NOW, exporter, bytes)
    };
    assert_eq!(verify(Role::Responder, &other_session, &client), Err(HandshakeError::BadProof));
    assert_eq!(verify(Role::Initiator, &exporter, &client), Err(HandshakeError::BadProof));
    let wrong_key = params_with([8; 32], "77,123,89,201192", "live");
    let forged = proof_for_exporter(&wrong_key, Role::Initiator, NOW, &exporter);
    assert_eq!(verify(Role::Responder, &exporter, &forged), Err(HandshakeError::BadProof));
    let foreign = params_with([7; 32], "1,2,3,4", "live");
    let foreign = proof_for_exporter(&foreign, Role::Initiator, NOW, &exporter);
    assert_eq!(verify(Role::Responder, &exporter, &foreign).unwrap_err().reason(), {
        RejectReason::ForeignSystem
    });
    let late = proof_for_exporter(&params(), Role::Initiator, NOW + 3 * 86_400, &exporter);
    assert_eq!(verify(Role::Responder, &exporter, &late).unwrap_err().reason(), {
        RejectReason::StaleEpoch
    });
    let mut tampered = client.clone();
    tampered[EXPORTER_PROOF_LEN - 1] ^= 1;
    assert_eq!(verify(Role::Responder, &exporter, &tampered), Err(HandshakeError::BadProof));
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Hello::decode(&bytes);
        let _ = decode_proof(&bytes);
        let _ = verify_exporter_proof(&params(), Role::Responder, NOW, &[0; 32], &bytes);
        let mut rng = StdRng::seed_from_u64(12);
        let (state, _) = ExpectHello::start(&params(), Role::Initiator, NOW, &mut rng);
        let _ = state.handle_hello(&bytes);
    }

    #[test]
    fn random_ephemerals_and_proofs_never_panic_nor_pass(
        nonce in any::<[u8; 32]>(),
        ephemeral in any::<[u8; 32]>(),
        mac in proptest::collection::vec(any::<u8>(), 0..40),
        proof_kind in any::<bool>(),
    ) {
        // A hello that passes the visible checks reaches the exchange and the proof check.
        let p = params();
        let hello = Hello {
            role: Role::Responder,
            system: p.system,
            environment: p.environment,
            epoch: p.schedule.epoch_at(NOW),
            nonce,
            ephemeral,
        };
        let mut rng = StdRng::seed_from_u64(13);
        let (state, _) = ExpectHello::start(&p, Role::Initiator, NOW, &mut rng);
        let mut proof = if proof_kind { vec![KIND_PROOF] } else { Vec::new() };
        proof.extend_from_slice(&mac);
        match state.handle_hello(&hello.encode()) {
            Ok((state, _)) => prop_assert!(state.handle_proof(&proof).is_err()),
            Err(err) => prop_assert_eq!(err, HandshakeError::Malformed { len: HELLO_LEN }),
        }
    }

    #[test]
    fn hello_round_trip(
        role in any::<bool>(),
        system in any::<[u32; 4]>(),
        env in any::<[u8; 4]>(),
        epoch in any::<u64>(),
        nonce in any::<[u8; 32]>(),
        ephemeral in any::<[u8; 32]>(),
    ) {
        let role = if role { Role::Initiator } else { Role::Responder };
        let hello = Hello {
            role, system: RmSystem(system), environment: EnvironmentTag(env),
            epoch: Epoch(epoch), nonce, ephemeral,
        };
        prop_assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
    }
}
