//! Steps of many tenants batched over real HTTP: every tenant's greedy text is
//! the text it gets alone, also beside neighbours that time out or hang up,
//! a prompt's logits do not depend on how it is cut into chunks, and a tenant
//! that floods the server does not starve a quiet one.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use realm_host::compute::BatchPolicy;
use serde_json::json;

use crate::support::{
    self, DEFAULT_MODEL, Deployment, Server, block_on, completion, golden_models, metric, tenant, wait_for,
};

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
];

fn text(server: &Server, tenant: &str, prompt: &str, max_tokens: u32) -> String {
    text_of(server, DEFAULT_MODEL, tenant, prompt, max_tokens)
}

fn text_of(server: &Server, model: &str, tenant: &str, prompt: &str, max_tokens: u32) -> String {
    let reply = server.call(
        "POST",
        "/v1/completions",
        Some(&format!("key-{tenant}")),
        Some(completion(model, prompt, max_tokens)),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["choices"][0]["text"].as_str().expect("text").to_string()
}

fn batch_totals(server: &Server) -> (f64, f64) {
    let batches = metric(server, "realm_batches_total ").expect("realm_batches_total");
    let sequences = metric(server, "realm_batched_sequences_total ").expect("realm_batched_sequences_total");
    (batches, sequences)
}

#[test]
fn each_tenant_gets_its_own_greedy_text_when_batched() {
    let ids = ["t0", "t1", "t2", "t3"];
    let tenants: String = ids.iter().map(|id| tenant(id, "")).collect();
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenants);
    // The K-quant models too, where present: their products take other
    // kernels at 1, 4 and 8 rows, as llama.cpp's do.
    let models = golden_models();
    for model in &models[1..] {
        deployment.link(model);
    }
    let server = &deployment.serve(&[], Stdio::inherit());
    for model in models {
        let alone: Vec<String> = ids
            .iter()
            .zip(PROMPTS)
            .map(|(id, p)| text_of(server, model, id, p, 24))
            .collect();
        let (batches, sequences) = batch_totals(server);
        let together: Vec<String> = std::thread::scope(|scope| {
            let calls: Vec<_> = ids
                .iter()
                .zip(PROMPTS)
                .map(|(&id, p)| scope.spawn(move || text_of(server, model, id, p, 24)))
                .collect();
            calls.into_iter().map(|c| c.join().expect("no panic")).collect()
        });
        let (batches_after, sequences_after) = batch_totals(server);
        assert_eq!(together, alone, "{model}: batched text differs from the text alone");
        let mean = (sequences_after - sequences) / (batches_after - batches);
        assert!(
            mean >= 1.5,
            "{model}: four concurrent tenants ran {mean:.2} sequences per batch"
        );
    }
}

/// However the scheduler cuts a prompt into chunks (by `--max-batch-tokens`
/// alone, or smaller beside other sequences' decode steps), the logits after
/// it are the same bits as after the prompt in one piece: the cuts keep every
/// row on the kernels it takes in one piece (the K-quant models change
/// kernels at 4 and 8 rows).
#[test]
fn a_prompt_gives_the_same_logits_however_it_is_cut() {
    let note = "Here is a note about how a bicycle works, and why its chain needs oil. ";
    let text = format!("{}Write a short essay.", note.repeat(20));
    let whole = support::instance_batching(BatchPolicy::unbatched());
    let cut: Vec<_> = [64, 37, 8]
        .into_iter()
        .map(|cap| {
            let policy = BatchPolicy {
                max_tokens: cap,
                prefill_beside_decode: cap,
                ..BatchPolicy::default()
            };
            (cap, support::instance_batching(policy))
        })
        .collect();
    for model in golden_models() {
        let ids = block_on(whole.tokenize(model, &text, true, false)).expect("tokenize");
        assert!(ids.len() > 300, "{model}: a prompt of {} tokens", ids.len());
        // A length that no cut divides: each has a last piece to place.
        let ids = ids[..298].to_vec();
        let expected = block_on(whole.evaluate(model, ids.clone())).expect("evaluate");
        for (cap, instance) in &cut {
            let got = block_on(instance.evaluate(model, ids.clone())).expect("evaluate");
            let same =
                got.len() == expected.len() && got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{model}: the prompt cut at {cap} tokens gives other logits");
        }
    }
}

/// A streaming completion held open after its first event; dropping it
/// disconnects, which cancels the generation.
fn open_stream(server: &Server, key: &str, prompt: &str, max_tokens: u32) -> BufReader<TcpStream> {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    let body = json!({
        "model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "ignore_eos": true
    })
    .to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("data:") {
        line.clear();
        assert!(reader.read_line(&mut line).expect("read") > 0, "the stream ended early");
        assert!(
            !line.starts_with("HTTP/1.1 4") && !line.starts_with("HTTP/1.1 5"),
            "{line}"
        );
    }
    reader
}

/// A quiet tenant's request (16 tokens), timed, and how many batches ran
/// meanwhile.
fn quiet_request(server: &Server) -> (Duration, f64) {
    let (batches, _) = batch_totals(server);
    let started = Instant::now();
    text(server, "quiet", "The capital of France is", 16);
    let took = started.elapsed();
    (took, batch_totals(server).0 - batches)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

#[test]
fn a_flooding_tenant_leaves_a_quiet_one_its_latency() {
    // Batches of two: the flooding tenant's four instances and the quiet
    // tenant's one compete for two slots, so the slots follow the tenants'
    // (equal) weights rather than the number of steps each has waiting.
    let tenants = format!("{}{}", tenant("flood", ""), tenant("quiet", ""));
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenants);
    let server = deployment.serve(&["--max-batch", "2", "--instances", "4"], Stdio::inherit());
    quiet_request(&server);
    let mut alone: Vec<Duration> = (0..3).map(|_| quiet_request(&server).0).collect();

    let flood: Vec<_> = (0..50)
        .map(|i| {
            open_stream(
                &server,
                "key-flood",
                &format!("Request {i}: tell me a long story."),
                1000,
            )
        })
        .collect();
    wait_for("50 flooding requests running", || {
        metric(&server, "realm_running_requests{tenant=\"flood\"}") == Some(50.0)
    });
    // Five samples each way: the ratio of medians, not of single requests,
    // so that one burst of load on a small machine does not decide it.
    let flooded: Vec<(Duration, f64)> = (0..5).map(|_| quiet_request(&server)).collect();
    drop(flood);
    wait_for("the flood to be cancelled", || {
        metric(&server, "realm_running_requests{tenant=\"flood\"}") == Some(0.0)
    });
    alone.extend((0..2).map(|_| quiet_request(&server).0));

    // The quiet tenant's 17 steps (a prompt and 16 tokens) each take the next
    // batch: a tenant that is served less than another goes first.
    for (_, batches) in &flooded {
        assert!(
            *batches <= 17.0 * 1.5 + 4.0,
            "the quiet tenant waited: {batches} batches for its 17 steps"
        );
    }
    // Its latency: each step shares a batch with one flooding step, and two
    // rows cost about twice one on the CPU (fewer than four rows do not share
    // their weight reads); the batch also waits for the quiet tenant's guest to
    // sample. Measured 2.2x to 3.2x on a busy 2-core machine; the bound is 4x
    // (without the tenant shares, the quiet tenant gets one batch in 2.5).
    let batches: Vec<f64> = flooded.iter().map(|f| f.1).collect();
    let (alone, flooded) = (median(alone), median(flooded.iter().map(|f| f.0).collect()));
    let ratio = flooded.as_secs_f64() / alone.as_secs_f64();
    eprintln!(
        "quiet tenant: {alone:?} alone, {flooded:?} beside 50 flooding requests ({ratio:.2}x), in {batches:?} batches"
    );
    assert!(ratio < 4.0, "the quiet tenant slowed {ratio:.2}x beside a flood");
}

#[test]
fn a_neighbour_cancelled_or_past_its_deadline_leaves_the_batch_unchanged() {
    let tenants = [
        tenant("steady", ""),
        tenant("hurried", "[tenant.limits]\nrequest_deadline_secs = 0.5"),
        tenant("impatient", ""),
    ]
    .concat();
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenants);
    let server = deployment.serve(&[], Stdio::inherit());
    let prompt = PROMPTS[1];
    let alone = text(&server, "steady", prompt, 64);

    let (batches, sequences) = batch_totals(&server);
    let beside = std::thread::scope(|scope| {
        let steady = scope.spawn(|| text(&server, "steady", prompt, 64));
        // Past its deadline mid-generation: a 504 or an error event.
        let hurried = scope.spawn(|| {
            let mut body = completion(DEFAULT_MODEL, "Tell me a long story.", 1000);
            body["ignore_eos"] = json!(true);
            server.call("POST", "/v1/completions", Some("key-hurried"), Some(body))
        });
        // A client that goes away mid-stream.
        let stream = open_stream(&server, "key-impatient", "Count to a thousand: 1, 2, 3,", 1000);
        std::thread::sleep(Duration::from_millis(200));
        drop(stream);
        let hurried = hurried.join().expect("no panic");
        assert_eq!(hurried.status, 504, "{}", hurried.text);
        steady.join().expect("no panic")
    });
    let (batches_after, sequences_after) = batch_totals(&server);
    assert_eq!(
        beside, alone,
        "the steady tenant's text changed beside failing neighbours"
    );
    assert!(
        sequences_after - sequences > batches_after - batches,
        "the tenants shared batches"
    );
    wait_for("the cancelled stream to end", || {
        metric(&server, "realm_running_requests{tenant=\"impatient\"}") == Some(0.0)
    });
}
