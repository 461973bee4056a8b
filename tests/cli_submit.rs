//! `meshnode submit` and `meshnode units` through the real binary.

mod common;

use common::*;

fn receipt(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a receipt {line:?}: {e}"))
}

#[test]
fn submit_one_unit_from_a_file_and_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let payload = tmp.path().join("sale.json");
    std::fs::write(&payload, br#"{"sale":9.95}"#).unwrap();
    let r1 = receipt(ok(&["submit", "--data-dir", s(&d), "--file", s(&payload)]).trim());
    let dbid = status(&d)["dbid"].as_str().unwrap().to_string();
    assert_eq!(r1["origin"], dbid.as_str());
    assert_eq!(r1["seq"], 1);
    assert_eq!(r1["physkey"].as_str().unwrap().len(), 32);

    let out = run_with_input(
        &["submit", "--data-dir", s(&d), "--kind", "TUEV", "--urgent"],
        b"door opened",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r2 = receipt(text(&out.stdout).trim());
    assert_eq!(r2["seq"], 2);
    assert!(r2["physkey"].as_str().unwrap() > r1["physkey"].as_str().unwrap(), "time-ordered");

    let held = units(&d);
    assert_eq!(held.len(), 2);
    assert_eq!(held[0]["kind"], "TUBT");
    assert_eq!(held[0]["urgency"], "normal");
    assert_eq!(held[0]["length"], 13);
    assert_eq!(held[1]["kind"], "TUEV");
    assert_eq!(held[1]["urgency"], "urgent");
    assert_eq!(held[1]["physkey"], r2["physkey"]);
    let st = status(&d);
    assert_eq!(st["units_total"], 2);
    assert_eq!(st["units_by_origin"][&dbid], 2);
    let files = st["dati_files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    let name = files[0]["name"].as_str().unwrap();
    assert!(name.starts_with(&format!("TUBT_{dbid}_")) && name.ends_with(".DATI"), "{name}");
}

#[test]
fn jsonl_batches_print_one_receipt_per_line_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let mut input = String::new();
    for i in 0..2500 {
        input.push_str(&format!(
            "{{\"kind\":\"TUBT\",\"urgent\":{},\"body\":{{\"sale\":{i},\"lines\":[1,2]}}}}\n",
            i % 100 == 0
        ));
    }
    input.push('\n'); // blank lines are skipped
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--jsonl", "-"], input.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let receipts: Vec<_> = text(&out.stdout).lines().map(receipt).collect();
    assert_eq!(receipts.len(), 2500);
    for (i, r) in receipts.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
    }
    let held = units(&d);
    assert_eq!(held.len(), 2500);
    assert_eq!(held.iter().filter(|u| u["urgency"] == "urgent").count(), 25);
}

#[test]
fn a_bad_line_stops_with_its_number_and_keeps_what_came_before() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let input = "{\"body\":1}\n{\"body\":2}\n{\"kind\":\"TUXX\",\"body\":3}\n{\"body\":4}\n";
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--jsonl", "-"], input.as_bytes());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 3") && err.contains("TUXX"), "{err}");
    assert_eq!(text(&out.stdout).lines().count(), 2);
    assert_eq!(units(&d).len(), 2);

    let out = run_with_input(&["submit", "--data-dir", s(&d), "--jsonl", "-"], b"not json\n");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("line 1"), "{}", text(&out.stderr));
    assert_eq!(units(&d).len(), 2);
}

#[test]
fn same_physkey_twice_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    let key = "CUSTOMER-00000000000000000000042";
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--physkey", key], b"edit 1");
    let first = receipt(text(&out.stdout).trim());
    assert_eq!(first["physkey"], key);
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--physkey", key], b"edit 1 again");
    assert!(out.status.success());
    let again = receipt(text(&out.stdout).trim());
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["existing"], true);
    // In one batch too.
    let line = format!("{{\"physkey\":\"{key}\",\"body\":1}}\n{{\"physkey\":\"OTHER-KEY-0000000000000000000001\",\"body\":2}}\n{{\"physkey\":\"OTHER-KEY-0000000000000000000001\",\"body\":3}}\n");
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--jsonl", "-"], line.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rs: Vec<_> = text(&out.stdout).lines().map(receipt).collect();
    assert_eq!(rs[0]["seq"], first["seq"]);
    assert_eq!(rs[1]["seq"], 2);
    assert_eq!(rs[2]["seq"], 2);
    assert_eq!(units(&d).len(), 2);
    // A malformed physkey is an argument error.
    let out = run_with_input(&["submit", "--data-dir", s(&d), "--physkey", "short"], b"x");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("32"), "{}", text(&out.stderr));
}

#[test]
fn oversized_payload_is_refused_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = init(tmp.path(), "a", &[]);
    ok(&["submit", "--data-dir", s(&d), "--file", s(&d.join("meshnode.toml"))]);
    let big = vec![b'x'; (1 << 20) + 1];
    let out = run_with_input(&["submit", "--data-dir", s(&d)], &big);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("1048577") && err.contains("payload_limit"), "{err}");
    assert_eq!(units(&d).len(), 1);
    // Exactly at the limit is fine; a lower configured limit is honoured.
    let out = run_with_input(&["submit", "--data-dir", s(&d)], &big[..1 << 20]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cfg = std::fs::read_to_string(d.join("meshnode.toml")).unwrap();
    std::fs::write(
        d.join("meshnode.toml"),
        cfg.replace("payload_limit = 1048576", "payload_limit = 100"),
    )
    .unwrap();
    let out = run_with_input(&["submit", "--data-dir", s(&d)], &[b'y'; 101]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("limit of 100"), "{}", text(&out.stderr));
    assert_eq!(units(&d).len(), 2);
}
