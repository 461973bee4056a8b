//! `meshnode log verify|dump|import` and `meshnode rebuild` through the real binary.

mod common;

use std::io::Write;

use common::*;

fn submit_many(d: &std::path::Path, n: usize, tag: &str) {
    let input: String = (0..n).map(|i| format!("{{\"body\":{{\"{tag}\":{i}}}}}\n")).collect();
    let out = run_with_input(&["submit", "--data-dir", s(d), "--jsonl", "-"], input.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn verify_names_the_file_and_offset_of_the_first_bad_record() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    submit_many(&d, 50, "x");
    let out = ok(&["log", "verify", "--data-dir", s(&d)]);
    assert!(out.contains("50 records"), "{out}");
    let file = dati_files(&d).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let err = fails(&["log", "verify", "--data-dir", s(&d)]);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err}");
    assert!(err.contains("offset"), "{err}");
}

#[test]
fn dump_prints_records_as_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    submit_many(&d, 3, "sale");
    let file = dati_files(&d).pop().unwrap();
    let out = ok(&["log", "dump", "--data-dir", s(&d), "--file", s(&file), "--payload"]);
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 3);
    assert_eq!(lines[2]["payload"], "{\"sale\":2}");
    assert!(lines[0]["offset"].as_u64().unwrap() > 0);
    // Without a data directory there is no key: a clear error.
    let err = fails(&["log", "dump", "--file", s(&file)]);
    assert!(err.contains("--data-dir"), "{err}");
    // Another system's key cannot read it.
    let other = init(tmp.path(), "other", &[]);
    let err = fails(&["log", "dump", "--data-dir", s(&other), "--file", s(&file)]);
    assert!(err.to_lowercase().contains("key"), "{err}");
}

#[test]
fn import_takes_units_carried_from_another_member_once() {
    let tmp = tempfile::tempdir().unwrap();
    let a = init(tmp.path(), "a", &[]);
    let join = tmp.path().join("join.key");
    ok(&["key", "export", "--data-dir", s(&a), "--out", s(&join)]);
    let b = tmp.path().join("b");
    ok(&["init", "--data-dir", s(&b), "--join", s(&join)]);
    submit_many(&a, 40, "a");
    submit_many(&b, 5, "b");
    // "USB stick": copy a's logs somewhere else, import them at b, twice.
    let stick = tmp.path().join("stick");
    std::fs::create_dir(&stick).unwrap();
    let mut carried = Vec::new();
    for f in dati_files(&a) {
        let to = stick.join(f.file_name().unwrap());
        std::fs::copy(&f, &to).unwrap();
        carried.push(to);
    }
    let mut args = vec!["log", "import", "--data-dir", s(&b)];
    args.extend(carried.iter().map(|p| s(p)));
    let out = ok(&args);
    assert!(out.contains("40 new"), "{out}");
    let out = ok(&args);
    assert!(out.contains("0 new"), "{out}");
    let st = status(&b);
    assert_eq!(st["units_total"], 45);
    let a_dbid = status(&a)["dbid"].as_str().unwrap().to_string();
    assert_eq!(st["units_by_origin"][&a_dbid], 40);
    // b now also keeps a log of a's units.
    assert!(dati_files(&b).iter().any(|f| f.to_str().unwrap().contains(&a_dbid)));
    // A file of another system is refused and nothing is taken.
    let other = init(tmp.path(), "other", &[]);
    submit_many(&other, 3, "o");
    let foreign = dati_files(&other).pop().unwrap();
    let err = fails(&["log", "import", "--data-dir", s(&b), s(&foreign)]);
    assert!(err.contains("nothing taken") || err.to_lowercase().contains("key"), "{err}");
    assert_eq!(status(&b)["units_total"], 45);
}

#[test]
fn rebuild_recreates_the_store_from_the_logs_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    submit_many(&d, 300, "r");
    let before = units(&d);
    let out = ok(&["rebuild", "--data-dir", s(&d)]);
    assert!(out.contains("300 units"), "{out}");
    assert_eq!(units(&d), before);
    // Even with the store deleted outright.
    std::fs::remove_dir_all(d.join("store")).unwrap();
    assert_eq!(units(&d), before);
    let next = run_with_input(&["submit", "--data-dir", s(&d)], b"next");
    let next: serde_json::Value = serde_json::from_str(text(&next.stdout).trim()).unwrap();
    assert_eq!(next["seq"], 301);
}

#[test]
fn a_torn_tail_is_repaired_on_start_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    submit_many(&d, 20, "t");
    let file = dati_files(&d).pop().unwrap();
    // A half-written record at the end, as a crash mid-append leaves it.
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(&[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let out =
        cmd(&["units", "--data-dir", s(&d)]).env("MESHNODE_LOG", "meshnode=warn").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 20);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("repaired") || stderr.contains("torn"), "{stderr}");
    ok(&["log", "verify", "--data-dir", s(&d)]);
}

#[test]
fn a_missing_daily_log_is_named_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    submit_many(&d, 5, "m");
    let file = dati_files(&d).pop().unwrap();
    let aside = tmp.path().join("archived.DATI");
    std::fs::rename(&file, &aside).unwrap();
    let err = fails(&["units", "--data-dir", s(&d)]);
    assert!(err.contains("missing") && err.contains("put the file back"), "{err}");
    // Putting it back restores everything; nothing was lost.
    std::fs::rename(&aside, &file).unwrap();
    assert_eq!(units(&d).len(), 5);
}
