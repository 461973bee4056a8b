//! RelayCore over both stores: admission verdicts, delivery, quotas, TTL, isolation, restart.

use std::net::SocketAddr;

use rand::SeedableRng;

use super::*;
use crate::crypto::admission::AdmissionKey;
use crate::id::InstallId;
use crate::relay::store::{MemoryRelayStore, SledRelayStore};
use crate::wire::relay::Signature;

const RELAY_KEY: [u8; 32] = [0x5a; 32];
const SYS_A: RmSystem = RmSystem([77, 123, 89, 201_192]);
const SYS_B: RmSystem = RmSystem([1, 2, 3, 4]);
const ENV: [u8; 4] = [0xe, 0xe, 0xe, 0xe];
const MAILBOX: Mailbox = Mailbox([3; 16]);

fn install(seed: u64) -> InstallId {
    InstallId::random(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

fn key(seed: u64, system: RmSystem) -> AdmissionKey {
    AdmissionKey::derive(&install(seed), system, ENV).unwrap()
}

fn policy(key: &AdmissionKey, max_payloads: u64) -> SystemPolicy {
    SystemPolicy {
        env: "live".into(),
        verifiers: vec![key.verifier()],
        quota_bytes: 1 << 20,
        max_payloads,
        max_ttl_secs: 3600,
    }
}

fn admitted(max_payloads: u64) -> Admitted {
    let mut admitted = Admitted::default();
    admitted
        .systems
        .insert(Scope { rmsystem: SYS_A, env_tag: ENV }, policy(&key(1, SYS_A), max_payloads));
    admitted
        .systems
        .insert(Scope { rmsystem: SYS_B, env_tag: ENV }, policy(&key(2, SYS_B), max_payloads));
    admitted
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn drain<S: RelayStore>(core: &mut RelayCore<S>) -> Vec<RelayOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn frames_to<S: RelayStore>(core: &mut RelayCore<S>, conn: ConnId) -> Vec<RelayFrame> {
    drain(core)
        .into_iter()
        .filter_map(|o| match o {
            RelayOutput::Send { conn: c, frame } if c == conn => Some(frame),
            _ => None,
        })
        .collect()
}

/// Connects `conn` and answers the challenge with `key` claiming `system`; returns the frames.
fn connect<S: RelayStore>(
    core: &mut RelayCore<S>,
    conn: ConnId,
    key: &AdmissionKey,
    system: RmSystem,
) -> Vec<RelayFrame> {
    let nonce = [conn as u8; 32];
    let exporter = [0x77; 32];
    core.handle_connected(0, conn, addr(4000 + conn as u16), nonce, exporter);
    let challenge = match frames_to(core, conn).pop() {
        Some(RelayFrame::Challenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    assert_eq!(challenge.relay_key, RELAY_KEY);
    let transcript = AuthTranscript {
        nonce: challenge.nonce,
        exporter,
        rmsystem: system,
        env_tag: ENV,
        relay_key: challenge.relay_key,
    };
    let auth = Auth {
        rmsystem: system.to_bytes(),
        env_tag: ENV,
        signature: Signature(key.sign(&transcript)),
    };
    core.handle_frame(0, conn, RelayFrame::Auth(auth)).unwrap();
    frames_to(core, conn)
}

fn post(seq: u32, len: usize) -> RelayFrame {
    RelayFrame::Post(Post {
        seq,
        mailbox: MAILBOX,
        ttl_secs: 60,
        broadcast: false,
        payload: vec![seq as u8; len],
    })
}

fn core_on<S: RelayStore>(store: S, max_payloads: u64) -> RelayCore<S> {
    RelayCore::new(RELAY_KEY, store, admitted(max_payloads), RelayLimits::default())
}

#[test]
fn member_is_welcomed_with_its_address_and_outsiders_are_refused() {
    let mut core = core_on(MemoryRelayStore::new(), 10);
    let frames = connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    assert!(
        matches!(&frames[..], [RelayFrame::Welcome(w)] if w.observed == addr(4001)),
        "{frames:?}"
    );
    // Another system, not admitted here.
    let frames = connect(&mut core, 2, &key(3, RmSystem([9, 9, 9, 9])), RmSystem([9, 9, 9, 9]));
    assert_eq!(frames, vec![RelayFrame::Refused { reason: RefuseReason::UnknownSystem }]);
    // Knows only the RmSystem: a key from a random install id.
    let frames = connect(&mut core, 3, &key(99, SYS_A), SYS_A);
    assert_eq!(frames, vec![RelayFrame::Refused { reason: RefuseReason::BadProof }]);
    // Admitted system B's key claiming system A.
    let frames = connect(&mut core, 4, &key(2, SYS_B), SYS_A);
    assert_eq!(frames, vec![RelayFrame::Refused { reason: RefuseReason::BadProof }]);
    // A post before admission costs the connection.
    core.handle_connected(0, 5, addr(4005), [5; 32], [0; 32]);
    drain(&mut core);
    core.handle_frame(0, 5, post(1, 1024)).unwrap();
    assert_eq!(
        frames_to(&mut core, 5),
        vec![RelayFrame::Refused { reason: RefuseReason::Malformed }]
    );
    // Silence past the deadline.
    core.handle_connected(0, 6, addr(4006), [6; 32], [0; 32]);
    drain(&mut core);
    assert_eq!(core.poll_timeout(), Some(10_000));
    core.handle_timeout(10_000).unwrap();
    assert_eq!(
        frames_to(&mut core, 6),
        vec![RelayFrame::Refused { reason: RefuseReason::AuthTimeout }]
    );
    let status = core.status();
    assert_eq!(status.refused["unknown_system"], 1);
    assert_eq!(status.refused["bad_proof"], 2);
    assert_eq!(status.refused["malformed"], 1);
    assert_eq!(status.refused["auth_timeout"], 1);
    let a = status.systems.iter().find(|s| s.rmsystem == SYS_A.to_string()).unwrap();
    assert_eq!((a.connected, a.counters.bad_proof), (1, 2));
}

#[test]
fn post_deliver_take_between_members() {
    let mut core = core_on(MemoryRelayStore::new(), 10);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    connect(&mut core, 2, &key(1, SYS_A), SYS_A);
    core.handle_frame(1, 1, post(7, 1024)).unwrap();
    assert!(core.wants_commit());
    assert!(frames_to(&mut core, 1).is_empty(), "no Posted before the flush");
    core.commit().unwrap();
    assert_eq!(frames_to(&mut core, 1), vec![RelayFrame::Posted { seqs: vec![7] }]);
    core.handle_frame(2, 2, RelayFrame::Subscribe { mailboxes: vec![MAILBOX] }).unwrap();
    let id = match &frames_to(&mut core, 2)[..] {
        [RelayFrame::Deliver(d)] => {
            assert_eq!(d.payload, vec![7; 1024]);
            d.id
        }
        other => panic!("{other:?}"),
    };
    // A live post is forwarded at once to the subscriber.
    core.handle_frame(3, 1, post(8, 4096)).unwrap();
    assert!(
        matches!(&frames_to(&mut core, 2)[..], [RelayFrame::Deliver(d)] if d.payload.len() == 4096)
    );
    core.handle_frame(4, 2, RelayFrame::Taken { ids: vec![id] }).unwrap();
    assert_eq!(core.store_mut().usage(Scope { rmsystem: SYS_A, env_tag: ENV }).count, 1);
    // Bad sizes are refused per post, not per connection.
    core.handle_frame(5, 1, post(9, 1000)).unwrap();
    assert_eq!(
        frames_to(&mut core, 1),
        vec![RelayFrame::PostRefused { seq: 9, reason: PostRefuseReason::BadClass }]
    );
}

#[test]
fn quota_refuses_and_counts() {
    let mut core = core_on(MemoryRelayStore::new(), 2);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    for seq in 0..3 {
        core.handle_frame(0, 1, post(seq, 1024)).unwrap();
    }
    core.commit().unwrap();
    let frames = frames_to(&mut core, 1);
    assert!(
        frames.contains(&RelayFrame::PostRefused { seq: 2, reason: PostRefuseReason::QuotaFull })
    );
    assert!(frames.contains(&RelayFrame::Posted { seqs: vec![0, 1] }));
    let status = core.status();
    let a = status.systems.iter().find(|s| s.rmsystem == SYS_A.to_string()).unwrap();
    assert_eq!((a.usage.count, a.counters.quota_refusals, a.counters.posted), (2, 1, 2));
}

#[test]
fn ttl_expires() {
    let mut core = core_on(MemoryRelayStore::new(), 10);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    core.handle_frame(1_000, 1, post(1, 1024)).unwrap();
    drain(&mut core);
    assert_eq!(core.poll_timeout(), Some(61_000));
    core.handle_timeout(60_999).unwrap();
    assert_eq!(core.status().systems[1].usage.count, 1);
    core.handle_timeout(61_000).unwrap();
    let status = core.status();
    let a = status.systems.iter().find(|s| s.rmsystem == SYS_A.to_string()).unwrap();
    assert_eq!((a.usage.count, a.counters.expired), (0, 1));
}

#[test]
fn mailboxes_of_one_system_are_invisible_to_another() {
    let mut core = core_on(MemoryRelayStore::new(), 10);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    connect(&mut core, 2, &key(2, SYS_B), SYS_B);
    core.handle_frame(0, 2, RelayFrame::Subscribe { mailboxes: vec![MAILBOX] }).unwrap();
    core.handle_frame(0, 1, post(1, 1024)).unwrap();
    assert!(frames_to(&mut core, 2).is_empty());
    // Guessing ids does not delete another system's payload either.
    core.handle_frame(0, 2, RelayFrame::Taken { ids: (0..100).collect() }).unwrap();
    assert_eq!(core.store_mut().usage(Scope { rmsystem: SYS_A, env_tag: ENV }).count, 1);
}

#[test]
fn restart_keeps_payloads_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut core = core_on(SledRelayStore::open(dir.path()).unwrap(), 10);
        connect(&mut core, 1, &key(1, SYS_A), SYS_A);
        core.handle_frame(0, 1, post(1, 1024)).unwrap();
        core.commit().unwrap();
        assert_eq!(frames_to(&mut core, 1), vec![RelayFrame::Posted { seqs: vec![1] }]);
    }
    let mut core = core_on(SledRelayStore::open(dir.path()).unwrap(), 10);
    assert_eq!(core.status().systems.iter().map(|s| s.usage.count).sum::<u64>(), 1);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    core.handle_frame(0, 1, RelayFrame::Subscribe { mailboxes: vec![MAILBOX] }).unwrap();
    assert!(
        matches!(&frames_to(&mut core, 1)[..], [RelayFrame::Deliver(d)] if d.payload == vec![1; 1024])
    );
}

#[test]
fn too_many_connections_from_one_address() {
    let mut core = core_on(MemoryRelayStore::new(), 10);
    for conn in 0..16 {
        core.handle_connected(0, conn, addr(1), [0; 32], [0; 32]);
    }
    drain(&mut core);
    core.handle_connected(0, 16, addr(1), [0; 32], [0; 32]);
    assert_eq!(
        frames_to(&mut core, 16),
        vec![RelayFrame::Refused { reason: RefuseReason::RateLimited }]
    );
}

#[test]
fn delivery_window_holds_back_the_rest_until_taken() {
    let limits = RelayLimits { delivery_window_bytes: 2048, ..RelayLimits::default() };
    let mut core = RelayCore::new(RELAY_KEY, MemoryRelayStore::new(), admitted(10), limits);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    for seq in 1..=4 {
        core.handle_frame(0, 1, post(seq, 1024)).unwrap();
    }
    connect(&mut core, 2, &key(1, SYS_A), SYS_A);
    let delivered = |frames: Vec<RelayFrame>| -> Vec<(u64, u8)> {
        frames
            .into_iter()
            .filter_map(|f| match f {
                RelayFrame::Deliver(d) => Some((d.id, d.payload[0])),
                _ => None,
            })
            .collect()
    };
    core.handle_frame(0, 2, RelayFrame::Subscribe { mailboxes: vec![MAILBOX] }).unwrap();
    let first = delivered(frames_to(&mut core, 2));
    assert_eq!(first.iter().map(|d| d.1).collect::<Vec<_>>(), [1, 2], "window of two");
    core.handle_frame(0, 2, RelayFrame::Taken { ids: vec![first[0].0] }).unwrap();
    let next = delivered(frames_to(&mut core, 2));
    assert_eq!(next.iter().map(|d| d.1).collect::<Vec<_>>(), [3], "nothing skipped");
    core.handle_frame(0, 2, RelayFrame::Taken { ids: vec![first[1].0, next[0].0] }).unwrap();
    assert_eq!(delivered(frames_to(&mut core, 2)).iter().map(|d| d.1).collect::<Vec<_>>(), [4]);
    // A reconnect redelivers what was delivered but not taken (at least once).
    core.handle_disconnected(2);
    connect(&mut core, 3, &key(1, SYS_A), SYS_A);
    core.handle_frame(0, 3, RelayFrame::Subscribe { mailboxes: vec![MAILBOX] }).unwrap();
    assert_eq!(delivered(frames_to(&mut core, 3)).iter().map(|d| d.1).collect::<Vec<_>>(), [4]);
}

#[test]
fn posts_over_the_rate_are_refused_per_post() {
    let limits = RelayLimits { posts_per_sec: 10, post_burst: 2, ..RelayLimits::default() };
    let mut core = RelayCore::new(RELAY_KEY, MemoryRelayStore::new(), admitted(100), limits);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    for seq in 1..=3 {
        core.handle_frame(0, 1, post(seq, 1024)).unwrap();
    }
    let refused = RelayFrame::PostRefused { seq: 3, reason: PostRefuseReason::RateLimited };
    assert_eq!(frames_to(&mut core, 1), vec![refused]);
    // 100 ms later one token is back.
    core.handle_frame(100, 1, post(4, 1024)).unwrap();
    core.handle_frame(100, 1, post(5, 1024)).unwrap();
    core.commit().unwrap();
    let frames = frames_to(&mut core, 1);
    assert!(frames.contains(&RelayFrame::Posted { seqs: vec![1, 2, 4] }), "{frames:?}");
    let status = core.status();
    let a = status.systems.iter().find(|s| s.rmsystem == SYS_A.to_string()).unwrap();
    assert_eq!(a.counters.rate_limited_posts, 2);
}

#[test]
fn broadcasts_are_not_taken_and_the_oldest_is_evicted() {
    let mut core = core_on(MemoryRelayStore::new(), 1000);
    connect(&mut core, 1, &key(1, SYS_A), SYS_A);
    let presence = Mailbox([0xbb; 16]);
    for seq in 0..=MAX_BROADCASTS_PER_SYSTEM as u32 {
        let post =
            Post { seq, mailbox: presence, ttl_secs: 60, broadcast: true, payload: vec![1; 1024] };
        core.handle_frame(0, 1, RelayFrame::Post(post)).unwrap();
    }
    let scope = Scope { rmsystem: SYS_A, env_tag: ENV };
    let (count, oldest) = core.store_mut().broadcasts(scope);
    assert_eq!(count, MAX_BROADCASTS_PER_SYSTEM);
    assert_eq!(oldest.map(|(m, _)| m), Some(presence));
    drain(&mut core);
    connect(&mut core, 2, &key(1, SYS_A), SYS_A);
    core.handle_frame(0, 2, RelayFrame::Subscribe { mailboxes: vec![presence] }).unwrap();
    let ids: Vec<u64> = frames_to(&mut core, 2)
        .into_iter()
        .filter_map(|f| match f {
            RelayFrame::Deliver(d) => Some(d.id),
            _ => None,
        })
        .collect();
    assert!(!ids.is_empty());
    core.handle_frame(0, 2, RelayFrame::Taken { ids }).unwrap();
    assert_eq!(core.store_mut().broadcasts(scope).0, MAX_BROADCASTS_PER_SYSTEM, "not taken");
}
