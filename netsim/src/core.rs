//! The factory for the real protocol core: `meshnode::proto::Node` over a ledger without logs
//! on the simulated node's `MemoryStore` (behind the disk-full switch).

use std::collections::BTreeMap;

use meshnode::crypto::{KeySchedule, SystemKey};
use meshnode::ledger::Ledger;
use meshnode::proto::{ConfiguredPeer, Node, NodeConfig, Role as CoreRole};
use meshnode::store::MemoryStore;
use meshnode::{DatabaseId, DeviceId, Environment, InstanceId, RmSystem};

use crate::engine::{BuildContext, NodeFactory};
use crate::network::{NodeId, Role};
use crate::FailingStore;

/// The system every simulated node belongs to.
const SYSTEM: &str = "77,123,89,201192";

/// Builds real nodes; keeps each node's dbid across restarts (a restart is the same data
/// directory).
#[derive(Debug)]
pub struct CoreFactory {
    keys: KeySchedule,
    system: RmSystem,
    env: Environment,
    dbids: BTreeMap<NodeId, DatabaseId>,
    /// Anti-entropy interval for every node, ms.
    pub anti_entropy_interval_ms: u64,
    /// How often an offline configured peer is pinged, ms. The core's default is seed 001's
    /// 5 minutes; the simulator uses 30 s so that a run after its last heal does not spend
    /// most of its events waiting for the next ping (the property is the same, time scales).
    pub offline_ping_ms: u64,
}

impl Default for CoreFactory {
    fn default() -> Self {
        let system: RmSystem = SYSTEM.parse().expect("valid RmSystem");
        let env = Environment::live();
        let keys = KeySchedule::new(&SystemKey::from_bytes([0x5e; 32]), system, &env, 86_400);
        CoreFactory {
            keys,
            system,
            env,
            dbids: BTreeMap::new(),
            anti_entropy_interval_ms: 2_000,
            offline_ping_ms: 30_000,
        }
    }
}

fn core_role(role: Role) -> CoreRole {
    match role {
        Role::HeadOffice => CoreRole::MainServer,
        Role::StoreServer => CoreRole::StoreServer,
        _ => CoreRole::Lane,
    }
}

impl NodeFactory for CoreFactory {
    type Node = Node<FailingStore<MemoryStore>>;

    fn build(&mut self, ctx: BuildContext<'_>) -> Self::Node {
        let dbid = *self.dbids.entry(ctx.id).or_insert_with(|| {
            let name = format!("SIM{:012}", ctx.id.0);
            DatabaseId::from_bytes(name.as_bytes()).expect("15 characters of A-Z0-9")
        });
        let group = ctx.spec.groups.first().copied().unwrap_or_else(crate::scenario::group);
        let mut device = [0u8; 16];
        device[..4].copy_from_slice(&ctx.id.0.to_be_bytes());
        let mut instance = [0u8; 16];
        instance[..8].copy_from_slice(&ctx.seed.to_be_bytes());
        instance[8..12].copy_from_slice(&ctx.id.0.to_be_bytes());
        instance[12..].copy_from_slice(&ctx.incarnation.to_be_bytes());
        let mut cfg = NodeConfig::new(
            self.system,
            self.env.clone(),
            self.keys.clone(),
            core_role(ctx.spec.role),
            DeviceId(device),
            InstanceId(instance),
            group,
            group,
        );
        cfg.advertise = ctx.spec.addrs.iter().map(|(_, a)| *a).collect();
        cfg.configured = ctx
            .spec
            .peers
            .iter()
            .map(|p| ConfiguredPeer {
                addr: p.addr,
                priority: u32::from(p.priority),
                role: core_role(p.role),
            })
            .collect();
        cfg.rng_seed = ctx.seed;
        cfg.anti_entropy_interval_ms = self.anti_entropy_interval_ms;
        cfg.offline_ping_ms = self.offline_ping_ms;
        cfg.relay_path.relays = ctx.relays;
        let store = FailingStore::new(ctx.store, ctx.disk);
        // A MemoryStore read cannot fail; a failing disk switch only refuses writes.
        let ledger =
            Ledger::without_logs(store, dbid, 1 << 20).expect("open ledger on memory store");
        Node::new(cfg, ledger)
    }

    fn take_store(&mut self, node: Self::Node) -> MemoryStore {
        node.into_ledger().into_store().into_inner()
    }

    fn store<'a>(&self, node: &'a Self::Node) -> Option<&'a MemoryStore> {
        Some(node.ledger().store().inner())
    }

    fn protocol(&self) -> &str {
        "meshnode"
    }
}
