//! `realm-host serve`: the HTTP API in front of the tenants' instances.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use super::EngineArgs;
use crate::api;
use crate::compute::{Budget, ModelCatalog};
use crate::runtime::{InstanceSettings, Runtime, ServerContext, TenantCompute};
use crate::tenants::config::{Config, TenantConfig};
use crate::tenants::{RateLimits, RequestLimits, Tenant, Tenants};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on. Without `--config` only a loopback address is
    /// allowed, since the local tenant has no API keys.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The tenants file (TOML): tenants, their API key hashes, components,
    /// models and limits. Without it, one local tenant serves every model.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Engine instances per tenant (a tenant's `instances` overrides it): a
    /// tenant's concurrent generations spread over up to this many instances,
    /// created as they are needed, so that they run in the same batches.
    #[arg(long, default_value_t = 4)]
    instances: usize,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=64).contains(&args.instances), "--instances must be in 1..=64");
    let runtime = Runtime::load(&args.engine.component)?;
    let shared = args.engine.server_context()?;
    let catalog = ModelCatalog {
        dir: args.engine.models_dir.clone(),
        allow_paths: false,
    };
    let tenants = match &args.config {
        None => {
            if !args.listen.ip().is_loopback() {
                bail!(
                    "without --config, realm serves one local tenant without API keys, so it listens on a \
                     loopback address only (got {}); give a tenants file to serve a network",
                    args.listen
                );
            }
            let settings = args.engine.local_settings(shared.clone(), false);
            let limits = RequestLimits {
                instances: args.instances,
                ..RequestLimits::default()
            };
            let tenant = Tenant::new("local".into(), runtime, settings, limits, None);
            Tenants::local(tenant, catalog)
        }
        Some(path) => {
            let config = Config::load(path, &catalog.list())?;
            let mut components = Components::new(runtime);
            Tenants::from_config(&config, catalog.clone(), |entry| {
                let runtime = components.get(entry.component.as_ref())?;
                Ok(configured_tenant(
                    &args.engine,
                    args.instances,
                    entry,
                    runtime,
                    shared.clone(),
                    &catalog,
                ))
            })?
        }
    };
    tracing::info!(tenants = tenants.all().len(), "tenants ready");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(api::serve(args.listen, tenants, shared))
}

fn configured_tenant(
    engine: &EngineArgs,
    default_instances: usize,
    entry: &TenantConfig,
    runtime: Arc<Runtime>,
    shared: Arc<ServerContext>,
    catalog: &ModelCatalog,
) -> Tenant {
    let limits = &entry.limits;
    let server_deadline = engine.call_deadline();
    let settings = InstanceSettings {
        compute: TenantCompute {
            tenant: entry.id.clone(),
            shared,
            catalog: catalog.clone(),
            allowed_models: entry.models.clone(),
            kv_tokens: match limits.kv_tokens {
                Some(limit) => Budget::new(format!("tenant `{}`'s KV cache (in tokens)", entry.id), limit),
                None => Budget::unlimited(format!("tenant `{}`'s KV cache (in tokens)", entry.id)),
            },
            batch_weight: entry.batch_weight(),
        },
        guest_memory: limits.guest_memory_mib.unwrap_or(engine.guest_memory_mib) << 20,
        context_length: engine.ctx_size,
        // No single engine call may outlive the request it serves.
        call_deadline: limits
            .request_deadline()
            .map_or(server_deadline, |d| d.min(server_deadline)),
    };
    let request_limits = RequestLimits {
        rates: RateLimits {
            concurrent_requests: limits.concurrent_requests,
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
        },
        max_tokens_per_request: limits.max_tokens_per_request,
        request_deadline: limits.request_deadline(),
        instances: entry.instances.map_or(default_instances, |n| n as usize),
    };
    Tenant::new(
        entry.id.clone(),
        runtime,
        settings,
        request_limits,
        entry.models.clone(),
    )
}

/// Each distinct component compiled once, on the server's engine.
struct Components {
    default: Arc<Runtime>,
    loaded: HashMap<PathBuf, Arc<Runtime>>,
}

impl Components {
    fn new(default: Arc<Runtime>) -> Self {
        Self {
            default,
            loaded: HashMap::new(),
        }
    }

    fn get(&mut self, path: Option<&PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let Some(path) = path else {
            return Ok(self.default.clone());
        };
        if let Some(runtime) = self.loaded.get(path) {
            return Ok(runtime.clone());
        }
        let runtime = self.default.sibling(path)?;
        self.loaded.insert(path.clone(), runtime.clone());
        Ok(runtime)
    }
}
