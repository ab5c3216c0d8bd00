//! `realm-host bench` with tiny sizes: every test runs and reports positive,
//! well-formed figures.

use crate::support::{self, DEFAULT_MODEL, realm_host};

fn positive(value: &serde_json::Value, what: &str) -> f64 {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {value}"));
    assert!(v.is_finite() && v > 0.0, "{what}: {v}");
    v
}

/// `realm-host bench` on the default model, 2 CPU threads; the test adds its sizes.
fn bench_on_default_model() -> std::process::Command {
    let mut command = realm_host();
    command
        .arg("bench")
        .arg("--component")
        .arg(support::component())
        .arg("--models-dir")
        .arg(support::models_dir())
        .args(["--model", DEFAULT_MODEL, "--threads", "2", "--device", "cpu"]);
    command
}

#[test]
fn bench_reports_every_test_with_positive_figures() {
    let out = bench_on_default_model()
        .args(["-p", "16", "-n", "8", "--first-token", "16", "--repetitions", "1"])
        .args(["--instantiations", "10", "--constructions", "1"])
        .args(["--memory", "1,2", "--memory-ctx", "32"])
        .args(["--tenants", "2", "--tenant-prompt", "8", "--tenant-gen", "4", "--json"])
        .output()
        .expect("realm-host runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    assert_eq!(report["model"], DEFAULT_MODEL);
    assert_eq!(report["threads"], 2);
    assert_eq!(report["info"]["architecture"], "llama");
    let tests: Vec<&str> = report["speed"]
        .as_array()
        .expect("speed")
        .iter()
        .map(|row| {
            positive(&row["tokens_per_s"]["median"], "tokens/s");
            assert_eq!(row["tokens_per_s"]["samples"], 1);
            row["test"].as_str().expect("test")
        })
        .collect();
    assert_eq!(tests, ["pp16", "tg8"]);
    assert_eq!(report["first_token"][0]["prompt_tokens"], 16);
    positive(&report["first_token"][0]["ms"]["median"], "first token");

    let inst = &report["instantiation"];
    assert_eq!(inst["instance_us"]["samples"], 10);
    positive(&inst["instance_us"]["median"], "instantiation");
    positive(&inst["realm_first_ms"], "first realm");
    positive(&inst["realm_ms"]["median"], "realm");

    let memory = &report["memory"];
    assert_eq!(memory["positions"], 32);
    let rows = memory["rows"].as_array().expect("memory rows");
    assert_eq!(rows.len(), 2);
    let rss = |i: usize| positive(&rows[i]["resident"]["vm_rss_kib"], "VmRSS");
    assert!(rss(1) >= rss(0) && rss(0) > positive(&memory["baseline"]["vm_rss_kib"], "baseline"));
    let guest = |i: usize| positive(&rows[i]["resident"]["guest_pools_kib"], "guest memories");
    assert!(guest(1) > guest(0), "a second instance has its own linear memory");
    // 30 layers x 3 KV heads x 64 x 32 positions x (K, V) x f16
    assert_eq!(memory["kv_bytes_per_tenant"], 30 * 192 * 32 * 2 * 2);

    let boundary = &report["boundary"];
    assert_eq!(boundary["tokens"], 8);
    let total = positive(&boundary["total_us"], "decode token");
    let kernels = positive(&boundary["kernels_us"], "kernels");
    let guest = positive(&boundary["guest_us"], "guest");
    assert!(kernels + guest <= total * 1.0001, "{boundary}");

    let tenants = &report["tenants"][0];
    assert_eq!(tenants["tenants"], 2);
    assert_eq!(tenants["itl_ms"]["samples"], 2 * 4);
    positive(&tenants["aggregate_tokens_per_s"], "aggregate");
    positive(&tenants["itl_ms"]["p99"], "ITL p99");
}

#[test]
fn bench_prints_markdown_tables_by_default() {
    let out = bench_on_default_model()
        .args(["-p", "8", "-n", "4", "--first-token", "8", "-r", "1"])
        .args(["--instantiations", "0", "--constructions", "0", "--memory", "0"])
        .output()
        .expect("realm-host runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "| pp8 |",
        "| tg4 |",
        "| first token, 8-token prompt |",
        "generation.next",
    ] {
        assert!(stdout.contains(row), "no `{row}` in:\n{stdout}");
    }
    assert!(!stdout.contains("tenants ("), "the memory test was skipped:\n{stdout}");
}
