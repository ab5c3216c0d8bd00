//! Paths, golden files, a shared in-process instance, and a served `realm-host`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use realm_host::compute::{self, BatchPolicy, Budget, Device, ModelCatalog, Scheduler};
use realm_host::runtime::{InstanceHandle, InstanceSettings, Runtime, ServerContext, TenantCompute};

pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// The backend the in-process and served engines run on: `REALM_TEST_DEVICE`,
/// `cpu` (the default) or `cuda` (on a GPU machine).
pub fn device() -> Device {
    match std::env::var("REALM_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda,
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => panic!("REALM_TEST_DEVICE={other}: expected cpu or cuda"),
    }
}

fn device_arg() -> &'static str {
    match device() {
        Device::Cuda => "cuda",
        _ => "cpu",
    }
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn existing(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "`{}` is missing: run {how}", path.display());
    path
}

pub fn component() -> PathBuf {
    let path = std::env::var_os("REALM_COMPONENT").map_or_else(|| workspace().join("target/realm.wasm"), PathBuf::from);
    existing(path, "scripts/build-component.sh")
}

pub fn test_component(name: &str) -> PathBuf {
    existing(
        workspace().join(format!("target/test-components/{name}.wasm")),
        "scripts/build-test-components.sh",
    )
}

pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("REALM_MODELS_DIR").map_or_else(|| workspace().join("models"), PathBuf::from);
    existing(dir.join(format!("{DEFAULT_MODEL}.gguf")), "scripts/fetch-models.sh");
    dir
}

/// Models with golden files that the larger run (`scripts/fetch-models.sh --all`)
/// adds; the default model is always required.
const EXTRA_MODELS: &[&str] = &["qwen2.5-coder-0.5b-instruct-q4_k_m", "gemma-3-270m-q4_k_m"];

/// The default model and every extra model present in the models directory;
/// an absent extra model is skipped with a printed reason.
pub fn golden_models() -> Vec<&'static str> {
    let dir = models_dir();
    let mut models = vec![DEFAULT_MODEL];
    for model in EXTRA_MODELS {
        if dir.join(format!("{model}.gguf")).exists() {
            models.push(model);
        } else {
            eprintln!(
                "skipping {model}: not in {} (scripts/fetch-models.sh --all fetches it)",
                dir.display()
            );
        }
    }
    models
}

pub fn golden(model: &str, file: &str) -> serde_json::Value {
    let path = workspace().join("tests/golden").join(model).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn realm_host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_realm-host"))
}

pub fn settings(context_length: u32, shared: Arc<ServerContext>) -> InstanceSettings {
    InstanceSettings {
        compute: TenantCompute {
            tenant: "test".into(),
            shared,
            catalog: ModelCatalog {
                dir: models_dir(),
                allow_paths: false,
            },
            allowed_models: None,
            kv_tokens: Budget::unlimited("the KV tokens of tenant `test`"),
            batch_weight: 1,
        },
        guest_memory: 1 << 30,
        context_length,
        call_deadline: Duration::from_secs(120),
    }
}

pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| Runtime::load(&component()).expect("the engine component loads"))
        .clone()
}

pub fn shared_compute() -> Arc<ServerContext> {
    static SHARED: OnceLock<Arc<ServerContext>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let backend = compute::start_backend(device(), 2).expect("the test device's backend");
            ServerContext::new(Scheduler::new(backend, BatchPolicy::default())).expect("a server context")
        })
        .clone()
}

/// A fresh instance on its own scheduler, which batches as `policy` says.
pub fn instance_batching(policy: BatchPolicy) -> InstanceHandle {
    let backend = compute::start_backend(device(), 2).expect("the test device's backend");
    let shared = ServerContext::new(Scheduler::new(backend, policy)).expect("a server context");
    block_on(InstanceHandle::spawn(runtime(), settings(2048, shared))).expect("instance")
}

/// One engine instance on the default model, shared by the tests of this binary.
pub fn instance() -> InstanceHandle {
    static INSTANCE: OnceLock<InstanceHandle> = OnceLock::new();
    INSTANCE
        .get_or_init(|| block_on(InstanceHandle::spawn(runtime(), settings(2048, shared_compute()))).expect("instance"))
        .clone()
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(future)
}

pub fn completion(model: &str, prompt: &str, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({ "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 })
}

/// The value of the metric line that starts with `series`.
pub fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = server.call("GET", "/metrics", None, None).text;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A models directory and a tenants file in a temporary directory.
pub struct Deployment {
    pub dir: tempfile::TempDir,
}

impl Deployment {
    /// `real` models link to the default model's file; `fake` ones are empty
    /// files that only the misbehaving test component "opens".
    pub fn new(real: &[&str], fake: &[&str], tenants: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        std::fs::create_dir(&models).expect("models dir");
        let source = models_dir().join(format!("{DEFAULT_MODEL}.gguf"));
        for name in real {
            std::os::unix::fs::symlink(&source, models.join(format!("{name}.gguf"))).expect("link");
        }
        for name in fake {
            std::fs::write(models.join(format!("{name}.gguf")), b"").expect("fake model");
        }
        std::fs::write(dir.path().join("tenants.toml"), tenants).expect("tenants file");
        Self { dir }
    }

    pub fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    /// Serves `model` of the models directory too, under its own name.
    pub fn link(&self, model: &str) {
        let name = format!("{model}.gguf");
        std::os::unix::fs::symlink(models_dir().join(&name), self.models().join(name)).expect("link");
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("tenants.toml")
    }

    pub fn serve(&self, extra: &[&str], log: Stdio) -> Server {
        let config = self.config();
        let mut args = vec!["--config", config.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Server::start_in(&component(), &self.models(), &args, log)
    }
}

/// A `[[tenant]]` entry whose key is `key-<id>`.
pub fn tenant(id: &str, rest: &str) -> String {
    format!(
        "[[tenant]]\nid = \"{id}\"\napi_keys = [\"{}\"]\n{rest}\n",
        realm_host::tenants::keys::KeyHash::of(&format!("key-{id}"))
    )
}

/// A `realm-host serve` on an ephemeral port, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    pub fn start(component: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_in(component, &models_dir(), extra, Stdio::inherit())
    }

    /// A server on `models`, its stderr (the log) sent to `log`.
    pub fn start_in(component: &std::path::Path, models: &std::path::Path, extra: &[&str], log: Stdio) -> Self {
        let mut child = realm_host()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--device",
                device_arg(),
            ])
            .arg("--component")
            .arg(component)
            .arg("--models-dir")
            .arg(models)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("realm-host serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .to_string();
        Self { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the server to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok()?.code()
    }

    /// A request as the holder of `key` (None: no `Authorization` header).
    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<serde_json::Value>) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.header("content-type", "application/json");
        let response = match body {
            Some(body) => Self::agent().run(request.body(body.to_string()).expect("request")),
            None => Self::agent().run(request.body(()).expect("request")),
        };
        let mut response = response.expect("response");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after").map(|v| v.parse().expect("Retry-After is seconds"));
        let content_type = header("content-type").unwrap_or_default();
        let request_id = header("x-request-id");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("body");
        Reply {
            status,
            retry_after,
            content_type,
            request_id,
            text,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    /// GET `path`: the status and the body parsed as JSON.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = Self::agent()
            .get(format!("{}{path}", self.base))
            .call()
            .expect("request");
        Self::parse(response)
    }

    /// POST a raw body to `path`.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body)
            .expect("request");
        Self::parse(response)
    }

    /// Sends only the headers of a POST that declares `content_length` bytes, and
    /// reads the response: an oversize body must be refused before it is sent.
    pub fn post_declaring(&self, path: &str, content_length: usize) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).expect("write");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
        )
    }

    /// POSTs a streaming request and returns the status and the `data:` payloads
    /// of its server-sent events, in order (`[DONE]` kept as a string).
    pub fn post_stream(&self, path: &str, body: serde_json::Value) -> (u16, Vec<serde_json::Value>) {
        let reply = self.call("POST", path, None, Some(body));
        if reply.status != 200 {
            return (
                reply.status,
                vec![serde_json::from_str(&reply.text).unwrap_or_default()],
            );
        }
        (reply.status, reply.events())
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, &body.to_string())
    }

    fn parse(mut response: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, json)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer to `Server::call`.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub content_type: String,
    pub request_id: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `data:` payloads of a server-sent event stream (`[DONE]` as a string).
    pub fn events(&self) -> Vec<serde_json::Value> {
        assert_eq!(self.content_type, "text/event-stream", "{}", self.text);
        self.text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let data = event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an SSE data event: {event:?}"));
                serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_string()))
            })
            .collect()
    }
}

/// Asserts an OpenAI-shaped error body and returns its message.
pub fn error_message(body: &serde_json::Value) -> String {
    let error = &body["error"];
    assert!(error["type"].is_string(), "no error type in {body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "incomplete error: {body}"
    );
    error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
        .to_string()
}
