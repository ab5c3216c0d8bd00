//! Tenants: who a request runs as, which instance serves it, which models it
//! may use. Without a tenants file, one local tenant serves the models directory.

use std::sync::Arc;

use crate::compute::ModelCatalog;
use crate::runtime::InstanceHandle;

pub struct Tenant {
    pub id: String,
    pub instance: InstanceHandle,
    pub catalog: ModelCatalog,
}

#[derive(Clone)]
pub struct Tenants {
    local: Arc<Tenant>,
}

impl Tenants {
    /// One tenant that serves every request (no authentication).
    pub fn single(tenant: Tenant) -> Self {
        Self {
            local: Arc::new(tenant),
        }
    }

    /// The tenant a request runs as.
    pub fn for_request(&self) -> Arc<Tenant> {
        self.local.clone()
    }
}
