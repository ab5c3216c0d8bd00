//! The tenants file (`--config tenants.toml`): who may call the server, with
//! which engine, on which models, within which limits. Unknown keys are errors,
//! so a misspelt limit is never silently unenforced.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::keys::KeyHash;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// Key hashes that may read `/metrics`; without any, `/metrics` is open.
    #[serde(default)]
    pub metrics_api_keys: Vec<String>,
    #[serde(rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// `sha256:<hex>` hashes, as `realm-host keys hash` prints them.
    pub api_keys: Vec<String>,
    /// The tenant's engine build; the server's `--component` when absent.
    /// Relative paths are relative to the tenants file.
    pub component: Option<PathBuf>,
    /// Model names the tenant may use; every model of the directory when absent.
    pub models: Option<Vec<String>>,
    /// The tenant's share of a full batch against other tenants' (1 to 1000);
    /// 1 when absent.
    pub batch_weight: Option<u32>,
    /// Engine instances for the tenant's concurrent generations (1 to 64);
    /// the server's `--instances` when absent.
    pub instances: Option<u32>,
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl TenantConfig {
    pub fn batch_weight(&self) -> u32 {
        self.batch_weight.unwrap_or(1)
    }
}

/// A tenant's limits; an absent limit is the server's default (for guest
/// memory and the request deadline) or no limit.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub guest_memory_mib: Option<usize>,
    pub kv_tokens: Option<u64>,
    pub concurrent_requests: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_tokens_per_request: Option<u32>,
    pub request_deadline_secs: Option<f64>,
}

impl LimitsConfig {
    pub fn request_deadline(&self) -> Option<Duration> {
        self.request_deadline_secs.map(Duration::from_secs_f64)
    }
}

/// A parsed and checked tenants file.
pub struct Config {
    pub metrics_keys: Vec<KeyHash>,
    pub tenants: Vec<TenantConfig>,
}

impl Config {
    pub fn load(path: &Path, models: &[String]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let file: TenantsFile = toml::from_str(&text).with_context(|| format!("`{}` is invalid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::check(file, base, models).with_context(|| format!("`{}` is invalid", path.display()))
    }

    fn check(file: TenantsFile, base: &Path, models: &[String]) -> anyhow::Result<Self> {
        if file.tenants.is_empty() {
            bail!("it names no `[[tenant]]`");
        }
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        let mut tenants = Vec::with_capacity(file.tenants.len());
        for mut tenant in file.tenants {
            let id = tenant.id.clone();
            let valid_id = !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_id {
                bail!("tenant id `{id}`: use 1 to 64 letters, digits, `-` or `_`");
            }
            if !ids.insert(id.clone()) {
                bail!("tenant `{id}` is defined twice");
            }
            if tenant.api_keys.is_empty() {
                bail!("tenant `{id}` has no `api_keys`");
            }
            for key in &tenant.api_keys {
                let hash = KeyHash::parse(key).with_context(|| format!("tenant `{id}`"))?;
                if !keys.insert(hash) {
                    bail!("tenant `{id}`: an API key hash is listed twice (keys must name one tenant)");
                }
            }
            for model in tenant.models.iter().flatten() {
                if !models.contains(model) {
                    bail!("tenant `{id}` allows model `{model}`, which is not in the models directory");
                }
            }
            check_limits(&id, &tenant.limits)?;
            if !(1..=1000).contains(&tenant.batch_weight()) {
                bail!("tenant `{id}`: `batch_weight` must be in 1..=1000");
            }
            if tenant.instances.is_some_and(|n| !(1..=64).contains(&n)) {
                bail!("tenant `{id}`: `instances` must be in 1..=64");
            }
            tenant.component = tenant.component.map(|c| base.join(c));
            tenants.push(tenant);
        }
        let metrics_keys = file
            .metrics_api_keys
            .iter()
            .map(|k| KeyHash::parse(k).context("metrics_api_keys"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { metrics_keys, tenants })
    }
}

fn check_limits(id: &str, limits: &LimitsConfig) -> anyhow::Result<()> {
    let zero = [
        ("guest_memory_mib", limits.guest_memory_mib.map(|v| v as u64)),
        ("kv_tokens", limits.kv_tokens),
        ("concurrent_requests", limits.concurrent_requests.map(u64::from)),
        ("requests_per_minute", limits.requests_per_minute.map(u64::from)),
        ("tokens_per_minute", limits.tokens_per_minute),
        ("max_tokens_per_request", limits.max_tokens_per_request.map(u64::from)),
    ]
    .into_iter()
    .find(|(_, value)| *value == Some(0));
    if let Some((name, _)) = zero {
        bail!("tenant `{id}`: `{name}` must be at least 1 (leave it out for no limit)");
    }
    if let Some(secs) = limits.request_deadline_secs
        && !(secs > 0.0 && secs.is_finite() && secs <= 86_400.0)
    {
        bail!("tenant `{id}`: `request_deadline_secs` must be in (0, 86400]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn check(text: &str) -> anyhow::Result<Config> {
        let file: TenantsFile = toml::from_str(text)?;
        Config::check(file, Path::new("/etc/realm"), &["m1".to_string()])
    }

    #[test]
    fn a_full_tenant_parses_and_resolves_its_component() {
        let config = check(&format!(
            "[[tenant]]\nid = \"acme\"\napi_keys = [\"{KEY}\"]\ncomponent = \"acme.wasm\"\nmodels = [\"m1\"]\nbatch_weight = 3\n\
             [tenant.limits]\nkv_tokens = 4096\nrequest_deadline_secs = 2.5\n"
        ))
        .expect("valid");
        let tenant = &config.tenants[0];
        assert_eq!(tenant.component.as_deref(), Some(Path::new("/etc/realm/acme.wasm")));
        assert_eq!(tenant.limits.kv_tokens, Some(4096));
        assert_eq!(tenant.batch_weight(), 3);
        assert_eq!(tenant.limits.request_deadline(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn mistakes_are_refused_with_their_reason() {
        let cases = [
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\nlimit = {}\n",
                "unknown field",
            ),
            ("[[tenant]]\nid = \"a b\"\napi_keys = [\"{KEY}\"]\n", "tenant id"),
            ("[[tenant]]\nid = \"a\"\napi_keys = []\n", "no `api_keys`"),
            ("[[tenant]]\nid = \"a\"\napi_keys = [\"plain\"]\n", "sha256:"),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\nmodels = [\"m2\"]\n",
                "not in the models",
            ),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\n[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\n",
                "defined twice",
            ),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\n[[tenant]]\nid = \"b\"\napi_keys = [\"{KEY}\"]\n",
                "listed twice",
            ),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\n[tenant.limits]\nconcurrent_requests = 0\n",
                "at least 1",
            ),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\nbatch_weight = 0\n",
                "batch_weight",
            ),
            (
                "[[tenant]]\nid = \"a\"\napi_keys = [\"{KEY}\"]\ninstances = 65\n",
                "instances",
            ),
        ];
        for (text, expected) in cases {
            let text = text.replace("{KEY}", KEY);
            let error = match check(&text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => format!("{e:#}"),
            };
            assert!(error.contains(expected), "{text} → {error}");
        }
    }
}
