//! `meshnode demo` (README's main command) runs three nodes on loopback, shows them find each
//! other and the sales arrive everywhere in its status table, cleans up and exits 0. How long
//! it takes is measured by `scripts/bench demo`, not here.

mod common;

#[test]
fn demo_runs_and_cleans_up() {
    let out = common::run(&["demo"]);
    let stdout = common::text(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", common::text(&out.stderr));
    assert!(stdout.contains("all 5 sales arrived at every node"), "{stdout}");
    assert_eq!(stdout.matches("accepted {").count(), 5, "{stdout}");
    // The table, before and after the sales: each node with both others up, then 5 units.
    let (before, after) = stdout.split_once("all 5 sales arrived").unwrap();
    for node in ["store-server", "lane-1", "lane-2"] {
        let row = |part: &str| {
            part.lines()
                .find(|l| l.trim_start().starts_with(node))
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        };
        let (b, a) = (row(before).expect(node), row(after).expect(node));
        assert_eq!((&b[2][..], &b[3][..], &b[4][..]), ("0", "2", "up"), "{stdout}");
        assert_eq!((&a[2][..], &a[3][..], &a[4][..]), ("5", "2", "up"), "{stdout}");
    }
    let root = stdout
        .lines()
        .find_map(|l| l.split(" members in ").nth(1))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(root.trim()).exists(), "temporary data removed");
}
