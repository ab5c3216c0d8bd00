//! `realm-host serve`: the HTTP API in front of the tenants' instances.

use std::net::SocketAddr;

use clap::Args;

use super::EngineArgs;
use crate::api;
use crate::runtime::{InstanceHandle, Runtime};
use crate::tenants::{Tenant, Tenants};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = Runtime::load(&args.engine.component)?;
    let shared = args.engine.shared_compute()?;
    let settings = args.engine.local_settings(shared, false);
    let catalog = settings.compute.catalog.clone();
    let instance = InstanceHandle::spawn(runtime, settings)?;
    let tenants = Tenants::single(Tenant {
        id: "local".into(),
        instance,
        catalog,
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(api::serve(args.listen, tenants))
}
