//! Tenants: who a request runs as (its API key), which engine instance serves
//! it, which models it may use and within which limits. Without a tenants
//! file, one local tenant without authentication serves the models directory.

mod admission;
pub mod config;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use admission::Admission;
pub use admission::{Permit, RateLimits, Refusal};
use config::Config;
use keys::{KeyHash, KeyRing};

use crate::compute::{Budget, ModelCatalog};
use crate::runtime::{InstanceHandle, InstanceSettings, Runtime};

/// One tenant: its engine instance (created on first use) and its limits.
pub struct Tenant {
    pub id: String,
    /// Model names the tenant may use; None allows every model of the catalog.
    pub models: Option<Vec<String>>,
    pub max_tokens_per_request: Option<u32>,
    pub request_deadline: Option<Duration>,
    admission: Arc<Admission>,
    runtime: Arc<Runtime>,
    settings: InstanceSettings,
    instances: tokio::sync::Mutex<Vec<InstanceHandle>>,
    max_instances: usize,
}

impl Tenant {
    pub fn new(
        id: String,
        runtime: Arc<Runtime>,
        settings: InstanceSettings,
        limits: RequestLimits,
        models: Option<Vec<String>>,
    ) -> Self {
        Self {
            id,
            models,
            max_tokens_per_request: limits.max_tokens_per_request,
            request_deadline: limits.request_deadline,
            admission: Admission::new(limits.rates),
            runtime,
            settings,
            instances: tokio::sync::Mutex::new(Vec::new()),
            max_instances: limits.instances.max(1),
        }
    }

    /// The instance for a new request: an idle one, else a new one while the
    /// tenant may have more, else the least busy. Instances are made from the
    /// pre-instantiated component as they are needed; when the engine's pool
    /// has no slot left, a tenant that has an instance shares it.
    pub async fn instance(&self) -> anyhow::Result<InstanceHandle> {
        let mut pool = self.instances.lock().await;
        let least_busy = pool.iter().min_by_key(|i| i.generations()).cloned();
        if let Some(instance) = &least_busy
            && (instance.generations() == 0 || pool.len() >= self.max_instances)
        {
            return Ok(instance.clone());
        }
        match InstanceHandle::spawn(self.runtime.clone(), self.settings.clone()).await {
            Ok(instance) => {
                pool.push(instance.clone());
                Ok(instance)
            }
            Err(e) => match least_busy {
                Some(instance) => {
                    tracing::warn!(tenant = %self.id, error = %e, "no new instance; sharing one");
                    Ok(instance)
                }
                None => Err(e),
            },
        }
    }

    /// Admits a request of `generations` generations (its choices).
    pub fn admit(&self, generations: u32) -> Result<Permit, Refusal> {
        self.admission.admit(generations)
    }

    /// The most generations one request may run (the concurrency limit).
    pub fn most_generations(&self) -> Option<u32> {
        self.admission.most_generations()
    }

    pub fn running_requests(&self) -> u32 {
        self.admission.running()
    }

    pub fn kv_tokens(&self) -> &Arc<Budget> {
        &self.settings.compute.kv_tokens
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}

/// What a tenant's requests may ask for and how often.
#[derive(Default, Clone, Copy)]
pub struct RequestLimits {
    pub rates: RateLimits,
    pub max_tokens_per_request: Option<u32>,
    pub request_deadline: Option<Duration>,
    /// Engine instances the tenant's concurrent generations spread over (0
    /// counts as 1); the generations of all of them run in the same batches.
    pub instances: usize,
}

/// Why a request has no tenant.
#[derive(Debug)]
pub enum AuthError {
    MissingKey,
    UnknownKey,
}

#[derive(Clone)]
pub struct Tenants {
    inner: Arc<Inner>,
}

struct Inner {
    tenants: Vec<Arc<Tenant>>,
    /// None: the single local tenant serves every request without a key.
    keys: Option<KeyRing>,
    /// Who may read `/metrics`; none: everyone.
    metrics_keys: Option<KeyRing>,
    catalog: ModelCatalog,
}

impl Tenants {
    /// One tenant that serves every request, without authentication.
    pub fn local(tenant: Tenant, catalog: ModelCatalog) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenants: vec![Arc::new(tenant)],
                keys: None,
                metrics_keys: None,
                catalog,
            }),
        }
    }

    /// The tenants of a tenants file; `make` builds each tenant from its entry.
    pub fn from_config(
        config: &Config,
        catalog: ModelCatalog,
        mut make: impl FnMut(&config::TenantConfig) -> anyhow::Result<Tenant>,
    ) -> anyhow::Result<Self> {
        let mut tenants = Vec::with_capacity(config.tenants.len());
        let mut ring = Vec::new();
        for (index, entry) in config.tenants.iter().enumerate() {
            tenants.push(Arc::new(make(entry)?));
            for key in &entry.api_keys {
                ring.push((KeyHash::parse(key)?, index as u32));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                tenants,
                keys: Some(KeyRing::new(ring)),
                metrics_keys: (!config.metrics_keys.is_empty())
                    .then(|| KeyRing::new(config.metrics_keys.iter().map(|k| (*k, 0)).collect())),
                catalog,
            }),
        })
    }

    /// The tenant whose key the `Authorization: Bearer` header carries.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Tenant>, AuthError> {
        let Some(ring) = &self.inner.keys else {
            return Ok(self.inner.tenants[0].clone());
        };
        let key = bearer(authorization).ok_or(AuthError::MissingKey)?;
        let owner = ring.owner(key).ok_or(AuthError::UnknownKey)?;
        Ok(self.inner.tenants[owner as usize].clone())
    }

    /// Whether this `Authorization` header may read `/metrics`.
    pub fn may_read_metrics(&self, authorization: Option<&str>) -> bool {
        match &self.inner.metrics_keys {
            None => true,
            Some(ring) => bearer(authorization).is_some_and(|key| ring.owner(key).is_some()),
        }
    }

    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.inner.tenants
    }

    /// Every model of the models directory.
    pub fn models(&self) -> Vec<String> {
        self.inner.catalog.list()
    }
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}
