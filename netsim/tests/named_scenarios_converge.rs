//! Every named scenario converges at a small size with the toy protocol (the store offline for
//! a day, the laptop offline for a week, the blocked lane, head office down).

mod common;

use netsim::scenario::ScenarioKind;
use netsim::toy::ToyFactory;
use netsim::FaultSet;

#[test]
fn every_named_scenario_converges() {
    for kind in ScenarioKind::ALL {
        let params = common::small_chain(100, FaultSet::default());
        let report = common::run_toy(kind, &params, 2, ToyFactory::default());
        assert!(report.passed, "{kind}: {report:#?}");
        if kind != ScenarioKind::Chain {
            assert!(report.last_fault_ms.is_some(), "{kind}");
        }
    }
}

#[test]
fn named_scenarios_converge_with_random_faults() {
    for kind in ScenarioKind::ALL {
        let params = common::small_chain(100, FaultSet::ALL);
        let report = common::run_toy(kind, &params, 3, ToyFactory::default());
        assert!(report.passed, "{kind}: {report:#?}");
    }
}
