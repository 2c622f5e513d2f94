//! `gt06 simulate` against a real server: its summary agrees with what the server stored.

use crate::harness::*;
use serde_json::Value;
use std::process::Command;

/// Runs `gt06 simulate` with `args` against `g`; (exit success, summary JSON).
fn simulate(g: &Gt06, out: &std::path::Path, args: &[&str]) -> (bool, Value) {
    let output = Command::new(bin())
        .arg("simulate")
        .args(["--target", &g.tcp.to_string(), "--json", "--out"])
        .arg(out)
        .args(args)
        .output()
        .expect("run gt06 simulate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stdout}\n{stderr}"));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    assert_eq!(file, summary, "--out and --json disagree");
    assert!(stderr.contains("heartbeat ack latency ms"), "{stderr}");
    (output.status.success(), summary)
}

/// Positions the server holds for `n` devices from `base`, every page of them (flat out
/// a tracker sends more than one page's worth in two seconds).
fn stored(g: &Gt06, base: u64, n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let mut path = format!("/api/devices/{}/positions?limit=100000", base + i);
        for _page in 0..100 {
            let (status, v) = g.get_json(&path);
            assert_eq!(status, 200, "device {}: {v}", base + i);
            total += v["positions"].as_array().unwrap().len() as u64;
            match v["next"].as_str() {
                Some(next) => {
                    path = format!(
                        "/api/devices/{}/positions?limit=100000&from={next}",
                        base + i
                    )
                }
                None => break,
            }
        }
    }
    total
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("summary has no number `{k}`: {v}"))
}

#[test]
fn simulate_summary_matches_what_the_server_stored() {
    let g = Gt06::start();
    let dir = TempDir::new("sim");
    let out = dir.0.join("summary.json");

    // At a rate: 20 trackers, 10 fixes/s each, a heartbeat after every 5.
    let base = 860_000_000_000_001u64;
    let (ok, s) = simulate(
        &g,
        &out,
        &[
            "--devices",
            "20",
            "--rate",
            "10",
            "--heartbeat-every",
            "5",
            "--duration",
            "2",
            "--ramp",
            "0.5",
        ],
    );
    assert!(ok, "{s}");
    assert_eq!(s["mode"], "rate");
    assert_eq!(
        (n(&s, "connected"), n(&s, "logged_in"), n(&s, "failed")),
        (20, 20, 0)
    );
    let (sent, acked) = (n(&s, "positions_sent"), n(&s, "positions_acked"));
    assert!(sent >= 100, "{s}");
    assert!(acked <= sent && acked + 20 * 5 >= sent, "{s}");
    let hb = n(&s, "heartbeats_acked");
    assert!(hb > 0 && hb <= n(&s, "heartbeats_sent"), "{s}");
    let stored_rate = stored(&g, base, 20);
    assert!(
        acked <= stored_rate && stored_rate <= sent,
        "acked {acked} <= stored {stored_rate} <= sent {sent}: {s}"
    );
    let lat = &s["ack_latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());

    // Flat out: 5 other trackers, at most 2 unanswered heartbeats each.
    let base = 861_000_000_000_001u64;
    let (ok, s) = simulate(
        &g,
        &out,
        &[
            "--devices",
            "5",
            "--max",
            "--window",
            "2",
            "--heartbeat-every",
            "10",
            "--duration",
            "2",
            "--imei-base",
            "861000000000001",
        ],
    );
    assert!(ok, "{s}");
    assert_eq!(s["mode"], "max");
    assert_eq!(n(&s, "logged_in"), 5);
    let (sent, acked) = (n(&s, "positions_sent"), n(&s, "positions_acked"));
    // In flight at the end: at most window × (K + 1) frames per tracker.
    assert!(acked <= sent && acked + 5 * 2 * 10 >= sent, "{s}");
    assert!(
        n(&s, "heartbeats_sent") - n(&s, "heartbeats_acked") <= 5 * 2,
        "{s}"
    );
    let stored_max = stored(&g, base, 5);
    assert!(
        acked <= stored_max && stored_max <= sent,
        "acked {acked} <= stored {stored_max} <= sent {sent}: {s}"
    );
    assert!(s["positions_acked_per_s"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn simulate_fails_when_trackers_cannot_log_in() {
    let g = Gt06::start_config("[tcp]\nmax_connections = 2\n");
    let dir = TempDir::new("simfail");
    let (ok, s) = simulate(
        &g,
        &dir.0.join("s.json"),
        &["--devices", "4", "--duration", "1", "--ramp", "0"],
    );
    assert!(!ok, "{s}");
    assert_eq!(n(&s, "logged_in"), 2, "{s}");
    assert_eq!(n(&s, "failed"), 2, "{s}");
}
