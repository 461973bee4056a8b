//! Scenarios: a topology, a workload (who submits what when) and a fault timeline, all derived
//! from a seed, plus the engine's timing settings.
//!
//! The retail chain (`chain`): a head office LAN with one head office node; per store a LAN
//! with one store server and `lanes` lanes, WAN-linked to the head office LAN. Configured peers:
//! a store server has the head office; a lane has its store server (priority 0) and the head
//! office (priority 1, a fallback). Everyone joins one multicast group. The other scenarios are
//! the chain plus one story each: a store offline for a day, a laptop offline for a week, a lane
//! without WAN while its server is down, head office down for an hour.
//!
//! Random faults (`FaultSet`) come from the same seed: loss, duplication and reordering on
//! every path, clock skew up to a day per node, WAN flaps and partitions, crashes with restarts,
//! and full disks, all within the workload window; then `Fault::HealAll`, then time to settle.
//!
//! Not here: running a scenario (`engine`), judging it (`checks`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use meshnode::ledger::Submission;
use meshnode::proto::Time;
use meshnode::unit::{FileScopes, UnitKind, Urgency};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::engine::{seeded, STREAM_SCENARIO};
use crate::network::{Fault, NodeId, NodeSpec, PathParams, Role, SegmentId, Topology, WanId};

const SECOND: u64 = 1_000_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// The port every node listens on.
pub const PORT: u16 = 7070;

/// Timing settings of the engine.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// True time at the start (the nodes' clocks add their skew).
    pub start: Time,
    /// The run stops at `start` plus this, converged or not.
    pub time_limit_us: u64,
    /// An unanswerable `Connect` fails after this.
    pub connect_timeout_us: u64,
    /// The ends of a link broken by a partition or crash learn it after this (keepalive).
    pub failure_detect_us: u64,
    /// Smallest retransmission timeout a lost frame costs.
    pub min_rto_us: u64,
    /// How long after the last submission a run waits for `Accepted` before it may end.
    pub submit_grace_us: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            // 2025-01-01T00:00:00Z.
            start: Time(1_735_689_600 * SECOND),
            time_limit_us: HOUR,
            connect_timeout_us: 3 * SECOND,
            failure_detect_us: SECOND,
            min_rto_us: 200_000,
            submit_grace_us: 10 * SECOND,
        }
    }
}

/// One submission of the workload.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Microseconds after the start.
    pub at_us: u64,
    /// Where the application submits it.
    pub node: NodeId,
    /// What.
    pub submission: Submission,
}

/// Everything one run needs besides the factory and the seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name in reports.
    pub name: String,
    /// Segments, WAN links, nodes.
    pub topology: Topology,
    /// Submissions, by time.
    pub workload: Vec<Planned>,
    /// Faults: (microseconds after the start, fault).
    pub faults: Vec<(u64, Fault)>,
    /// Engine settings.
    pub config: SimConfig,
}

impl Scenario {
    /// A scenario with no workload and no fault.
    pub fn new(name: impl Into<String>, topology: Topology) -> Self {
        Scenario {
            name: name.into(),
            topology,
            workload: Vec::new(),
            faults: Vec::new(),
            config: SimConfig::default(),
        }
    }

    /// Adds a submission at `at_us` after the start.
    pub fn submit_at(&mut self, at_us: u64, node: NodeId, submission: Submission) {
        self.workload.push(Planned { at_us, node, submission });
    }

    /// Adds a fault at `at_us` after the start.
    pub fn fault_at(&mut self, at_us: u64, fault: Fault) {
        self.faults.push((at_us, fault));
    }

    /// When the last submission or fault happens, after the start.
    pub fn last_event_us(&self) -> u64 {
        let w = self.workload.iter().map(|p| p.at_us).max().unwrap_or(0);
        let f = self.faults.iter().map(|(t, _)| *t).max().unwrap_or(0);
        w.max(f)
    }
}

/// A submission of `payload_bytes` bytes whose payload starts with `index` (the rest is a
/// pattern, cheap to make; compression is not modelled).
pub fn submission(index: u64, payload_bytes: usize, urgency: Urgency) -> Submission {
    let mut payload: Vec<u8> =
        (0..payload_bytes).map(|j| (index as usize * 31 + j) as u8).collect();
    for (b, i) in payload.iter_mut().zip(index.to_le_bytes()) {
        *b = i;
    }
    Submission {
        kind: UnitKind::Tubt,
        urgency,
        scopes: FileScopes::NONE,
        physkey: None,
        payload,
        sensitive: Vec::new(),
    }
}

/// Which random faults a run gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultSet {
    /// Loss, duplication and reordering on every path.
    pub loss: bool,
    /// WAN flaps, partitions of sites, nodes and random halves.
    pub partitions: bool,
    /// Crashes with restarts.
    pub crashes: bool,
    /// Clock skew of up to a day per node.
    pub skew: bool,
    /// Full disks for a while.
    pub disk: bool,
}

impl FaultSet {
    /// Every kind.
    pub const ALL: FaultSet =
        FaultSet { loss: true, partitions: true, crashes: true, skew: true, disk: true };

    /// Whether any kind is on.
    pub fn any(self) -> bool {
        self != FaultSet::default()
    }
}

impl FromStr for FaultSet {
    type Err = String;

    /// `all`, `none`, or a comma list of `loss`, `partition`, `crash`, `skew`, `disk`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = FaultSet::default();
        for word in s.split(',').map(str::trim) {
            match word {
                "all" => set = FaultSet::ALL,
                "none" | "" => {}
                "loss" => set.loss = true,
                "partition" | "partitions" => set.partitions = true,
                "crash" | "crashes" => set.crashes = true,
                "skew" => set.skew = true,
                "disk" => set.disk = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: expected all, none, loss, partition, crash, skew, disk"
                    ))
                }
            }
        }
        Ok(set)
    }
}

/// The named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScenarioKind {
    /// The chain, nothing else.
    Chain,
    /// Store 1's WAN link is down for a day while everyone submits.
    StoreOfflineDay,
    /// A laptop on the head office LAN is cut off for a week, submitting all the while.
    LaptopOfflineWeek,
    /// Lane 1 of store 1 has no WAN, only its LAN; its store server is down for 5 minutes.
    LaneBlocked,
    /// Head office is down for an hour.
    HeadOfficeDown,
}

impl ScenarioKind {
    /// Every kind, in CLI order.
    pub const ALL: [ScenarioKind; 5] = [
        ScenarioKind::Chain,
        ScenarioKind::StoreOfflineDay,
        ScenarioKind::LaptopOfflineWeek,
        ScenarioKind::LaneBlocked,
        ScenarioKind::HeadOfficeDown,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Chain => "chain",
            ScenarioKind::StoreOfflineDay => "store-offline-day",
            ScenarioKind::LaptopOfflineWeek => "laptop-offline-week",
            ScenarioKind::LaneBlocked => "lane-blocked",
            ScenarioKind::HeadOfficeDown => "head-office-down",
        }
    }
}

impl fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScenarioKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ScenarioKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = ScenarioKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown scenario {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// Size and settings of a chain scenario.
#[derive(Debug, Clone)]
pub struct ChainParams {
    /// Stores.
    pub stores: u32,
    /// Lanes per store.
    pub lanes: u32,
    /// Units submitted in all.
    pub units: u32,
    /// Payload bytes per unit.
    pub payload_bytes: usize,
    /// Random faults.
    pub faults: FaultSet,
    /// Submissions spread over this (scenarios with an outage stretch it over the outage).
    pub submit_window_us: u64,
    /// Time allowed after the last scheduled event.
    pub settle_us: u64,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            stores: 4,
            lanes: 3,
            units: 1000,
            payload_bytes: 200,
            faults: FaultSet::default(),
            submit_window_us: MINUTE,
            settle_us: 10 * MINUTE,
        }
    }
}

/// The ids of a chain topology.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The topology.
    pub topology: Topology,
    /// The head office node.
    pub head_office: NodeId,
    /// The head office LAN.
    pub head_office_lan: SegmentId,
    /// Per store: its LAN, its WAN link, its server, its lanes.
    pub stores: Vec<StoreIds>,
}

/// One store of a [`Chain`].
#[derive(Debug, Clone)]
pub struct StoreIds {
    /// Its LAN.
    pub lan: SegmentId,
    /// Its WAN link to head office.
    pub wan: WanId,
    /// Its server.
    pub server: NodeId,
    /// Its lanes.
    pub lanes: Vec<NodeId>,
}

/// The multicast group every node joins.
pub fn group() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 77, 1)), PORT + 1)
}

/// The address of host `host` at store `store` (0 is head office).
pub fn address(store: u32, host: u8) -> SocketAddr {
    let [_, _, hi, lo] = store.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, hi.wrapping_add(1), lo, host)), PORT)
}

impl Chain {
    /// Head office plus `stores` stores of one server and `lanes` lanes (at most 200).
    pub fn new(stores: u32, lanes: u32) -> Chain {
        let mut t = Topology::new();
        let ho_lan = t.segment("head-office", PathParams::lan());
        let ho_addr = address(0, 1);
        let head_office = t.node(
            NodeSpec::new("head-office", Role::HeadOffice).on(ho_lan, ho_addr).group(group()),
        );
        let mut ids = Vec::new();
        for s in 1..=stores {
            let lan = t.segment(format!("store-{s}"), PathParams::lan());
            let wan = t.wan(lan, ho_lan, PathParams::wan());
            let server_addr = address(s, 1);
            let server = t.node(
                NodeSpec::new(format!("store-{s}"), Role::StoreServer)
                    .on(lan, server_addr)
                    .peer(ho_addr, Role::HeadOffice, 0)
                    .group(group()),
            );
            let lanes = (1..=lanes.min(200))
                .map(|l| {
                    t.node(
                        NodeSpec::new(format!("store-{s}-lane-{l}"), Role::Lane)
                            .on(lan, address(s, 9 + l as u8))
                            .peer(server_addr, Role::StoreServer, 0)
                            .peer(ho_addr, Role::HeadOffice, 1)
                            .group(group()),
                    )
                })
                .collect();
            ids.push(StoreIds { lan, wan, server, lanes });
        }
        Chain { topology: t, head_office, head_office_lan: ho_lan, stores: ids }
    }
}

/// Builds a named scenario from its parameters and the run's seed.
pub fn build(kind: ScenarioKind, params: &ChainParams, seed: u64) -> Scenario {
    let mut rng = seeded(seed, STREAM_SCENARIO);
    let mut chain = Chain::new(params.stores.max(1), params.lanes);
    let mut faults = Vec::new();
    let mut extra: Option<NodeId> = None;
    let mut window = params.submit_window_us;
    let first = chain.stores.first().cloned();
    match kind {
        ScenarioKind::Chain => {}
        ScenarioKind::StoreOfflineDay => {
            if let Some(store) = &first {
                faults.push((10 * SECOND, Fault::WanDown(store.wan)));
                faults.push((10 * SECOND + DAY, Fault::WanUp(store.wan)));
            }
            window = window.max(DAY);
        }
        ScenarioKind::LaptopOfflineWeek => {
            let laptop = chain.topology.node(
                NodeSpec::new("laptop", Role::Laptop)
                    .on(chain.head_office_lan, address(0, 50))
                    .peer(address(0, 1), Role::HeadOffice, 0)
                    .group(group()),
            );
            faults.push((10 * SECOND, Fault::Partition { id: 0, nodes: vec![laptop] }));
            faults.push((10 * SECOND + 7 * DAY, Fault::Heal { id: 0 }));
            extra = Some(laptop);
            window = window.max(7 * DAY);
        }
        ScenarioKind::LaneBlocked => {
            if let Some(store) = &first {
                if let Some(lane) = store.lanes.first() {
                    chain.topology.nodes[lane.0 as usize].wan_blocked = true;
                }
                faults.push((20 * SECOND, Fault::Crash(store.server)));
                faults.push((20 * SECOND + 5 * MINUTE, Fault::Restart(store.server)));
            }
            window = window.max(6 * MINUTE);
        }
        ScenarioKind::HeadOfficeDown => {
            faults.push((20 * SECOND, Fault::Crash(chain.head_office)));
            faults.push((20 * SECOND + HOUR, Fault::Restart(chain.head_office)));
            window = window.max(HOUR + MINUTE);
        }
    }
    let workload = workload(&chain, extra, params, window, &mut rng);
    let mut scenario = Scenario::new(kind.name(), chain.topology.clone());
    scenario.workload = workload;
    scenario.faults = faults;
    if params.faults.any() {
        random_faults(&mut scenario, &chain, params.faults, window, &mut rng);
    }
    scenario.config.time_limit_us = scenario.last_event_us().saturating_add(params.settle_us);
    scenario
}

/// `units` submissions over `[0, window)`: 80 % at lanes, 15 % at store servers, 5 % at head
/// office (or at `extra`, the laptop, when there is one: 5 % there and 5 % at head office).
fn workload(
    chain: &Chain,
    extra: Option<NodeId>,
    params: &ChainParams,
    window: u64,
    rng: &mut ChaCha8Rng,
) -> Vec<Planned> {
    let servers: Vec<NodeId> = chain.stores.iter().map(|s| s.server).collect();
    let lanes: Vec<NodeId> = chain.stores.iter().flat_map(|s| s.lanes.iter().copied()).collect();
    let mut out: Vec<Planned> = (0..params.units)
        .map(|i| {
            let pick: f64 = rng.gen();
            let node = match extra {
                Some(laptop) if pick < 0.05 => laptop,
                _ if pick < 0.10 => chain.head_office,
                _ if pick < 0.25 || lanes.is_empty() => {
                    *servers.choose(rng).unwrap_or(&chain.head_office)
                }
                _ => *lanes.choose(rng).unwrap_or(&chain.head_office),
            };
            let urgency = match rng.gen_range(0..20) {
                0 => Urgency::Urgent,
                1 => Urgency::Background,
                _ => Urgency::Normal,
            };
            let at_us = rng.gen_range(0..window.max(1));
            Planned {
                at_us,
                node,
                submission: submission(u64::from(i), params.payload_bytes, urgency),
            }
        })
        .collect();
    out.sort_by_key(|p| p.at_us);
    out
}

/// Adds the random faults of `set` within `[0, window)`, then heals everything at `window`.
fn random_faults(
    scenario: &mut Scenario,
    chain: &Chain,
    set: FaultSet,
    window: u64,
    rng: &mut ChaCha8Rng,
) {
    let topology = &mut scenario.topology;
    let n = topology.nodes.len() as u32;
    if set.loss {
        for w in &mut topology.wans {
            w.params.loss = rng.gen_range(0.0..0.05);
            w.params.duplicate = rng.gen_range(0.0..0.02);
            w.params.reorder = rng.gen_range(0.0..0.05);
            w.params.reorder_us = 50_000;
        }
        for s in &mut topology.segments {
            s.params.loss = rng.gen_range(0.0..0.01);
            s.params.duplicate = rng.gen_range(0.0..0.005);
            s.params.reorder = rng.gen_range(0.0..0.01);
            s.params.reorder_us = 2_000;
        }
    }
    if set.skew {
        for node in &mut topology.nodes {
            node.skew_us = rng.gen_range(-(DAY as i64)..=DAY as i64);
        }
    }
    let episodes = 1 + n / 20;
    let span = |rng: &mut ChaCha8Rng, min: u64, max: u64| {
        let at = rng.gen_range(0..window.max(1));
        (at, (at + rng.gen_range(min..max)).min(window))
    };
    let mut faults = Vec::new();
    let mut partition_id = 1_000;
    if set.partitions {
        for _ in 0..episodes {
            let (from, to) = span(rng, SECOND, MINUTE);
            match rng.gen_range(0..4) {
                0 => {
                    if let Some(store) = chain.stores.choose(rng) {
                        faults.push((from, Fault::WanDown(store.wan)));
                        faults.push((to, Fault::WanUp(store.wan)));
                    }
                }
                kind => {
                    let nodes = match kind {
                        1 => chain
                            .stores
                            .choose(rng)
                            .map_or_else(Vec::new, |s| topology.members(s.lan)),
                        2 => vec![NodeId(rng.gen_range(0..n))],
                        _ => (0..n).filter(|_| rng.gen_bool(0.5)).map(NodeId).collect(),
                    };
                    partition_id += 1;
                    faults.push((from, Fault::Partition { id: partition_id, nodes }));
                    faults.push((to, Fault::Heal { id: partition_id }));
                }
            }
        }
    }
    if set.crashes {
        for _ in 0..episodes {
            let (from, to) = span(rng, 10_000, 30 * SECOND);
            let node = NodeId(rng.gen_range(0..n));
            faults.push((from, Fault::Crash(node)));
            faults.push((to, Fault::Restart(node)));
        }
    }
    if set.disk {
        for _ in 0..1 + n / 50 {
            let (from, to) = span(rng, SECOND, 30 * SECOND);
            let node = NodeId(rng.gen_range(0..n));
            faults.push((from, Fault::DiskFull { node, full: true }));
            faults.push((to, Fault::DiskFull { node, full: false }));
        }
    }
    faults.push((window, Fault::HealAll));
    scenario.faults.extend(faults);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shape() {
        let chain = Chain::new(3, 2);
        assert_eq!(chain.topology.nodes.len(), 1 + 3 * 3);
        assert_eq!(chain.topology.wans.len(), 3);
        let lane = &chain.topology.nodes[chain.stores[1].lanes[1].0 as usize];
        assert_eq!(lane.name, "store-2-lane-2");
        assert_eq!(lane.addr(), Some("10.1.2.11:7070".parse().unwrap()));
        assert_eq!(lane.peers[0].addr, address(2, 1));
        assert_eq!(lane.peers[1].priority, 1);
    }

    #[test]
    fn same_seed_same_scenario() {
        let params = ChainParams { faults: FaultSet::ALL, ..ChainParams::default() };
        let a = build(ScenarioKind::Chain, &params, 5);
        let b = build(ScenarioKind::Chain, &params, 5);
        let c = build(ScenarioKind::Chain, &params, 6);
        assert_eq!(a.faults, b.faults);
        assert_eq!(a.workload.len(), 1000);
        let times = |s: &Scenario| s.workload.iter().map(|p| (p.at_us, p.node)).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&b));
        assert_ne!(times(&a), times(&c));
        assert_eq!(a.faults.last().map(|f| &f.1), Some(&Fault::HealAll));
    }

    #[test]
    fn fault_sets_parse() {
        assert_eq!("all".parse::<FaultSet>().unwrap(), FaultSet::ALL);
        assert!(!"none".parse::<FaultSet>().unwrap().any());
        let s: FaultSet = "loss,crash".parse().unwrap();
        assert!(s.loss && s.crashes && !s.skew);
        assert!("fire".parse::<FaultSet>().is_err());
        assert_eq!("lane-blocked".parse::<ScenarioKind>(), Ok(ScenarioKind::LaneBlocked));
    }
}
