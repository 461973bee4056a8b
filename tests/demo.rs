//! `meshnode demo` (README's main command) runs three nodes on loopback, shows the sales
//! arrive everywhere, cleans up and exits 0.

mod common;

#[test]
fn demo_runs_and_cleans_up() {
    let out = common::run(&["demo"]);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", common::text(&out.stderr));
    assert!(stdout.contains("all 5 sales arrived at every node"), "{stdout}");
    assert_eq!(stdout.matches("accepted {").count(), 5, "{stdout}");
    let root = stdout
        .lines()
        .find_map(|l| l.split(" members in ").nth(1))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(root.trim()).exists(), "temporary data removed");
}
