//! `realm-host run` and `realm-host tokenize` as a user runs them.

use crate::support::{self, DEFAULT_MODEL, realm_host};

fn run(args: &[&str]) -> std::process::Output {
    realm_host()
        .arg("run")
        .arg("--component")
        .arg(support::component())
        .arg("--models-dir")
        .arg(support::models_dir())
        .args(["--threads", "2", "--device", "cpu"])
        .args(args)
        .output()
        .expect("realm-host runs")
}

#[test]
fn run_continues_the_capital_of_france_as_llama_cpp() {
    let out = run(&[
        "--model",
        DEFAULT_MODEL,
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        "The capital of France is",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let golden = support::golden(DEFAULT_MODEL, "greedy.json");
    let expected = golden[0]["text"].as_str().expect("text");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "stdout carries the completion and nothing else"
    );
    assert!(expected.starts_with(" Paris.\n\nThe United States has a population of approximately 311"));
}

#[test]
fn run_accepts_a_model_path() {
    let path = support::models_dir().join(format!("{DEFAULT_MODEL}.gguf"));
    let out = run(&[
        "--model",
        path.to_str().expect("utf-8 path"),
        "--temperature",
        "0",
        "--max-tokens",
        "3",
        "Hi",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
}

#[test]
fn run_reports_bad_input_with_a_message_and_a_failing_exit() {
    let cases: [(&[&str], &str); 4] = [
        (&["--model", "no-such-model", "x"], "model not found"),
        (&["--model", DEFAULT_MODEL, "--ctx-size", "0", "x"], "invalid config"),
        (&["--model", DEFAULT_MODEL, "--temperature=-1", "x"], "temperature"),
        (
            &[
                "--model",
                DEFAULT_MODEL,
                "--ctx-size",
                "4",
                "a long prompt that cannot fit in four positions",
            ],
            "context",
        ),
    ];
    for (args, expected) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn tokenize_prints_llama_cpp_ids_as_json() {
    let out = realm_host()
        .args(["tokenize", "--json", "--model", DEFAULT_MODEL, "--component"])
        .arg(support::component())
        .arg("--models-dir")
        .arg(support::models_dir())
        .arg("Hello world")
        .output()
        .expect("realm-host runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a line");
    assert_eq!(
        serde_json::from_str::<Vec<u32>>(last).expect("a JSON array"),
        vec![19556, 905]
    );
}

/// Every golden prompt of every model present, through `realm-host run`:
/// llama.cpp's 32-token greedy text, whole (the CPU backend is bit-equal to
/// llama.cpp; CUDA's steps are checked by the engine's teacher-forced test).
#[test]
fn run_gives_llama_cpps_greedy_text_on_every_model() {
    if support::device() != realm_host::compute::Device::Cpu {
        return eprintln!("whole texts are compared on the CPU backend");
    }
    for model in support::golden_models() {
        for case in support::golden(model, "greedy.json").as_array().expect("array") {
            let prompt = case["prompt"].as_str().expect("prompt");
            let out = run(&[
                "--model",
                model,
                "--temperature",
                "0",
                "--max-tokens",
                "32",
                "--ignore-eos",
                prompt,
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                case["text"].as_str().expect("text"),
                "{model} {prompt:?}"
            );
        }
    }
}
