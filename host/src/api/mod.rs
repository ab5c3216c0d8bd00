//! The HTTP API (hyper 1 on tokio): OpenAI's `/v1/completions`,
//! `/v1/chat/completions` and `/v1/models`, plus `/health` and `/metrics`.

mod body;
mod completions;
mod error;
mod logprobs;
mod metrics;
mod request;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::runtime::ServerContext;
use crate::tenants::Tenants;

/// How long in-flight requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every request handler shares.
#[derive(Clone)]
pub struct App {
    tenants: Tenants,
    server: Arc<ServerContext>,
    metrics: Arc<metrics::Metrics>,
    /// Set at a shutdown signal: new generations get a 503 while running ones finish.
    draining: Arc<AtomicBool>,
}

pub async fn serve(listen: SocketAddr, tenants: Tenants, server: Arc<ServerContext>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    // The bound address (port 0 picks one) on stdout, for scripts and tests.
    println!("listening on http://{}", listener.local_addr()?);
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let app = App {
        tenants,
        server,
        metrics: Arc::default(),
        draining: Arc::default(),
    };
    let mut graceful = Some(GracefulShutdown::new());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut drained = std::pin::pin!(None);
    let mut grace = std::pin::pin!(tokio::time::sleep(Duration::MAX));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |request| routes::route(app.clone(), request));
                let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                // Connections that arrive while draining are still answered (503
                // for new work), so a load balancer sees a status, not a refusal.
                match &graceful {
                    Some(graceful) => drop(tokio::spawn(graceful.watch(connection))),
                    None => drop(tokio::spawn(connection)),
                }
            }
            _ = &mut shutdown, if graceful.is_some() => {
                tracing::info!("shutting down: finishing in-flight requests");
                app.draining.store(true, Ordering::SeqCst);
                drained.set(graceful.take().map(|g| Box::pin(g.shutdown())));
                grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            _ = async { drained.as_mut().as_pin_mut().expect("set").await }, if drained.is_some() => break,
            _ = &mut grace => {
                tracing::warn!("in-flight requests cut off at shutdown");
                break;
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
