//! The non-load parts of `lanyard bench server`, so the harness does not rot between runs: its
//! argument checks, and the table, Markdown, JSON and SVG it writes from given figures
//! (`lanyard bench render`). Nothing here measures or asserts on a duration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn lanyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lanyard")).args(args).output().expect("run lanyard")
}

fn figures() -> serde_json::Value {
    let row = |key: &str, system: &str, what: &str, conns: Option<u32>, value: f64, unit: &str| {
        serde_json::json!({"key": key, "system": system, "what": what, "conns": conns, "value": value,
                           "unit": unit, "p50_ms": 1.5, "p99_ms": 12.3, "failed": 0})
    };
    let mut rows = vec![
        row("ceiling", "ceiling", "verify + sign", None, 8000.0, "/s"),
        row("peer-16", "cfssl serve", "sign", Some(16), 2000.0, "/s"),
        row("peer-crl", "openssl ca", "gencrl time", None, 12.0, "s"),
    ];
    let mut ours = row("ours-16", "Lanyard", "issuance <API>", Some(16), 4000.0, "/s");
    ours["peer"] = "peer-16".into();
    ours["ceiling"] = "ceiling".into();
    ours["series"] = "Lanyard issuance".into();
    ours["failed"] = 3.into();
    rows.push(ours);
    let mut one = row("ours-1", "Lanyard", "issuance", Some(1), 1000.0, "/s");
    one["series"] = "Lanyard issuance".into();
    rows.push(one);
    let mut peer_series = row("peer-1", "cfssl serve", "sign", Some(1), 900.0, "/s");
    peer_series["series"] = "cfssl serve sign".into();
    rows.push(peer_series);
    let mut crl = row("ours-crl", "Lanyard", "CRL time", None, 2.0, "s");
    crl["peer"] = "peer-crl".into();
    rows.push(crl);
    serde_json::json!({"context": [["machine", "test"]], "rows": rows})
}

#[test]
fn render_writes_the_table_with_ratios_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("figures.json");
    std::fs::write(&input, serde_json::to_vec(&figures()).unwrap()).unwrap();
    let out = dir.path().join("out");
    let o = lanyard(&["bench", "render", input.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(md.contains("- machine: test"), "{md}");
    // A rate against its peer and its ceiling; a time against its peer (faster is above 1).
    let ours = md.lines().find(|l| l.contains("issuance <API>")).unwrap();
    assert_eq!(
        ours,
        "| **Lanyard** | issuance <API> | 16 | 4,000 /s | 1.50 ms | 12.3 ms | 3 | 2.00× cfssl serve | 0.50× ceiling |"
    );
    let crl = md.lines().find(|l| l.contains("CRL time")).unwrap();
    assert!(crl.ends_with("| 6.00× openssl ca |  |"), "{crl}");
    // The terminal shows the same table.
    assert!(String::from_utf8_lossy(&o.stdout).contains(ours));

    // The figures file is the input, unchanged in meaning.
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("figures.json")).unwrap()).unwrap();
    assert_eq!(back["rows"].as_array().unwrap().len(), 7);
    assert_eq!(back["rows"][3]["failed"], 3);

    let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    // One line per series, Lanyard solid and the peer dashed, both in the legend.
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert!(svg.contains(">Lanyard issuance</text>") && svg.contains(">cfssl serve sign</text>"));
    assert_eq!(svg.matches("stroke-dasharray").count(), 2, "the peer's line and its legend: {svg}");
    // Rows without a series or connections are not plotted: two Lanyard points, one cfssl point.
    assert_eq!(svg.matches("<circle").count(), 3);
    assert!(!svg.contains("<script"));
}

#[test]
fn render_refuses_what_is_not_a_figures_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("figures.json");
    std::fs::write(&input, "{\"rows\": [{\"key\": 1}]}").unwrap();
    let o = lanyard(&["bench", "render", input.to_str().unwrap(), "--out", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a figures file"));
    assert!(!dir.path().join("table.md").exists());
    let missing = dir.path().join("missing.json");
    let o = lanyard(&["bench", "render", missing.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn server_arguments_are_checked_before_anything_starts() {
    let o = lanyard(&["bench", "server", "--skip", "cfssl,bogus"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--skip \"bogus\": the parts are ceiling, cfssl, openssl"), "{err}");
    let o = lanyard(&["bench", "server", "--seconds", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--seconds must be at least 1"));
    let o = lanyard(&["bench", "server", "--certificates", "5"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--certificates must be at least 10"));
    // The help names the script that runs it.
    let o = lanyard(&["bench", "server", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("./scripts/bench"));
}

#[test]
fn the_connect_client_refuses_a_bad_request_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.bin");
    // A length of 100 with 3 bytes behind it.
    std::fs::write(&file, [0u8, 0, 0, 100, 1, 2, 3]).unwrap();
    let o = lanyard(&[
        "bench",
        "connect",
        "--addr",
        "127.0.0.1:9",
        "--requests",
        file.to_str().unwrap(),
        "--seconds",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("a truncated request file"));
    assert!(Path::new(&file).exists());
}
