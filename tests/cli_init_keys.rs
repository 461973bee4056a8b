//! `meshnode init`, `key export`, joining, the key file mode, the data directory lock and
//! `--status`, through the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn init_creates_a_system_with_secret_files_and_commented_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &["--system", "77,123,89,201192", "--env", "test"]);
    let mode = std::fs::metadata(d.join("system.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let config = std::fs::read_to_string(d.join("meshnode.toml")).unwrap();
    assert!(config.contains("payload_limit = 1048576") && config.contains("# "), "{config}");

    let st = status(&d);
    assert_eq!(st["rmsystem"], "77,123,89,201192");
    assert_eq!(st["env"], "test");
    assert_eq!(st["running"], false);
    assert_eq!(st["units_total"], 0);
    assert_eq!(st["dbid"].as_str().unwrap().len(), 15);
    assert!(st["device_id"].as_str().unwrap().len() >= 16);
    assert!(st["key_epoch"].as_u64().unwrap() > 20_000);
    assert!(st["units_by_origin"].is_object());
    assert!(st["dati_files"].is_array());

    // Human table too.
    let table = ok(&["--status", "--data-dir", s(&d)]);
    assert!(table.contains("77,123,89,201192") && table.contains("not running"), "{table}");
}

#[test]
fn random_rmsystem_when_not_given_and_bad_rmsystem_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(tmp.path(), "a", &[]);
    let b = init(tmp.path(), "b", &[]);
    assert_ne!(status(&a)["rmsystem"], status(&b)["rmsystem"]);
    let err = fails(&["init", "--data-dir", s(&tmp.path().join("c")), "--system", "1,2,3"]);
    assert!(err.contains("\"1,2,3\"") && err.contains("77,123,89,201192"), "{err}");
    assert!(!tmp.path().join("c").exists(), "nothing created on bad input");
}

#[test]
fn init_twice_refuses_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let key = std::fs::read(d.join("system.key")).unwrap();
    let identity = std::fs::read(d.join("identity.toml")).unwrap();
    let err = fails(&["init", "--data-dir", s(&d)]);
    assert!(err.contains("already holds a meshnode system"), "{err}");
    assert_eq!(std::fs::read(d.join("system.key")).unwrap(), key);
    assert_eq!(std::fs::read(d.join("identity.toml")).unwrap(), identity);
}

#[test]
fn join_file_makes_a_new_member_with_its_own_dbid() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(tmp.path(), "a", &["--system", "5,6,7,8"]);
    let join = tmp.path().join("join.key");
    ok(&["key", "export", "--data-dir", s(&a), "--out", s(&join)]);
    assert_eq!(std::fs::metadata(&join).unwrap().permissions().mode() & 0o777, 0o600);
    let b = tmp.path().join("b");
    ok(&["init", "--data-dir", s(&b), "--join", s(&join)]);
    let (sa, sb) = (status(&a), status(&b));
    assert_eq!(sa["rmsystem"], sb["rmsystem"]);
    assert_eq!(sa["env"], sb["env"]);
    assert_ne!(sa["dbid"], sb["dbid"]);
    // Same system key: b can read a's daily logs.
    ok(&["submit", "--data-dir", s(&a), "--file", s(&join)]);
    for f in dati_files(&a) {
        ok(&["log", "verify", "--data-dir", s(&b), "--file", s(&f)]);
    }
    // A damaged join file is refused with a reason.
    std::fs::write(tmp.path().join("bad.key"), "kind = \"join\"\n").unwrap();
    let err = fails(&[
        "init",
        "--data-dir",
        s(&tmp.path().join("c")),
        "--join",
        s(&tmp.path().join("bad.key")),
    ]);
    assert!(err.contains("bad.key"), "{err}");
}

#[test]
fn key_file_readable_by_others_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    std::fs::set_permissions(d.join("system.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&["submit", "--data-dir", s(&d), "--file", s(&d.join("meshnode.toml"))]);
    assert!(err.contains("chmod 600"), "{err}");
    let err = fails(&["--status", "--data-dir", s(&d)]);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn a_second_process_gets_a_clear_error_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    // A streaming submit holds the directory while its stdin stays open.
    let mut holder = cmd(&["submit", "--data-dir", s(&d), "--jsonl", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = holder.id().to_string();
    // Wait (with a deadline) until it holds the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lock = std::fs::read_to_string(d.join("lock")).unwrap_or_default();
        if lock.trim() == pid {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "holder never took the lock");
        std::thread::yield_now();
    }
    let err = fails(&["submit", "--data-dir", s(&d), "--file", s(&d.join("meshnode.toml"))]);
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(!err.to_lowercase().contains("sled"), "{err}");
    // Status still answers, and says who is busy.
    let st = status(&d);
    assert_eq!(st["busy_pid"], pid.as_str());
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

#[test]
fn bad_config_is_reported_with_its_line_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    ok(&["submit", "--data-dir", s(&d), "--file", s(&d.join("identity.toml"))]);
    let good = std::fs::read_to_string(d.join("meshnode.toml")).unwrap();
    std::fs::write(
        d.join("meshnode.toml"),
        good.replace("cache_mb = 64", "cache_mb = 64\ncahce = 3"),
    )
    .unwrap();
    let err = fails(&["units", "--data-dir", s(&d)]);
    assert!(
        err.contains("meshnode.toml") && err.contains("line") && err.contains("cahce"),
        "{err}"
    );
    std::fs::write(d.join("meshnode.toml"), good).unwrap();
    assert_eq!(units(&d).len(), 1);
}

#[test]
fn a_copied_data_directory_allocates_a_new_dbid_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(tmp.path(), "a", &[]);
    ok(&["submit", "--data-dir", s(&a), "--file", s(&a.join("identity.toml"))]);
    let old = status(&a)["dbid"].as_str().unwrap().to_string();
    let b = tmp.path().join("b");
    let cp = std::process::Command::new("cp").args(["-a", s(&a), s(&b)]).status().unwrap();
    assert!(cp.success());
    let out = cmd(&["submit", "--data-dir", s(&b), "--file", s(&a.join("identity.toml"))])
        .env("MESHNODE_LOG", "meshnode=info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("new dbid") && stderr.contains(&old), "{stderr}");
    let receipt: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_ne!(receipt["origin"], old.as_str());
    assert_eq!(receipt["seq"], 1, "the new dbid starts its own sequence");
    // The copy still holds the unit written under the old dbid.
    let st = status(&b);
    assert_eq!(st["units_by_origin"][&old], 1);
    // Simulating a move to another machine (different machine id) also changes the dbid.
    let before = status(&a)["dbid"].clone();
    let out = cmd(&["--status", "--json", "--data-dir", s(&a)])
        .env("MESHNODE_MACHINE_ID", "another-machine-0123456789")
        .output()
        .unwrap();
    let moved: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(moved["dbid"], before);
}

/// A reader that goes away (`meshnode --status | head -1`) ends the command quietly with
/// success, as for any Unix tool; a full stdout is an error that says so. Neither panics.
#[test]
fn status_into_a_closed_pipe_or_a_full_device_ends_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let mut child = cmd(&["--status", "--data-dir", s(&d)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = cmd(&["--status", "--data-dir", s(&d)]).stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot write to stdout") && !err.contains("panicked"), "{err}");
}
