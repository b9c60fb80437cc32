//! The services' HTTP server: axum's router on hyper's HTTP/1 connections, with the edges
//! bounded where `axum::serve` leaves them open. `axum::serve` sets no timer, so hyper's
//! header-read timeout never runs: a client that trickles its headers (slowloris) or
//! opens connections and says nothing holds a task and a socket for ever, and nothing caps
//! how many. Here each connection must finish its request head within
//! `header_read_timeout_ms` — which also closes a keep-alive connection idle that long —
//! and at most `max_connections` are open at once; more wait in the kernel's backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use handoff_config::HttpSettings;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Part;

/// A bound listener and the limits its connections are served under.
pub struct HttpListener {
    listener: TcpListener,
    header_read_timeout: Duration,
    max_connections: usize,
}

impl HttpListener {
    /// Binds `settings`' address (`default_port` when none is set; port 0 picks a free one).
    pub async fn bind(settings: &HttpSettings, default_port: u16) -> std::io::Result<Self> {
        Self::bind_to(settings, settings.address(default_port)).await
    }

    /// Binds the ops port: `settings.ops_port`, or the public port's default plus 100.
    pub async fn bind_ops(settings: &HttpSettings, default_port: u16) -> std::io::Result<Self> {
        let port = settings.ops_port.unwrap_or(default_port + OPS_OFFSET);
        Self::bind_to(settings, format!("{}:{port}", settings.host)).await
    }

    async fn bind_to(settings: &HttpSettings, address: String) -> std::io::Result<Self> {
        Ok(Self {
            listener: listen(&address).await?,
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms.max(1)),
            max_connections: settings.max_connections.max(1),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Connections the kernel completes and queues for a listener before it accepts them (it
/// caps this at `net.core.somaxconn`, 4096 on current kernels).
const BACKLOG: u32 = 4096;

/// Binds `address` (`host:port`) for listening, as `TcpListener::bind` does but with a
/// backlog of `BACKLOG` instead of std's 128. With 128, a burst of new connections — a
/// thousand customers writing at once, a platform opening connections for a spike — found
/// the queue full while the process was busy, and the kernel dropped the handshakes it
/// could not queue: each client waited a full second for its SYN to be sent again.
pub async fn listen(address: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std does: a restarted service rebinds its port while old connections linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// A service's HTTP server as one of its parts: serves `app` until `stop`, then lets the
/// requests in flight finish (idle connections close at once).
pub fn http_part(
    listener: HttpListener,
    app: Router,
    stop: CancellationToken,
) -> (&'static str, Part) {
    ("the HTTP server", Box::pin(serve(listener, app, stop)))
}

/// Where the ops port is by default: the service's public port plus this.
const OPS_OFFSET: u16 = 100;

/// The ops port's server (the second router of `health_routers`) as one of a service's parts.
pub fn ops_part(
    listener: HttpListener,
    app: Router,
    stop: CancellationToken,
) -> (&'static str, Part) {
    ("the ops HTTP server", Box::pin(serve(listener, app, stop)))
}

async fn serve(listener: HttpListener, app: Router, stop: CancellationToken) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(listener.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let timeout = listener.header_read_timeout;
        let stop = stop.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service)
                // The web chat's WebSockets: once upgraded, a connection leaves this loop
                // (and its slot) and is the web chat's to end on `stop`.
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            // A closed or cut-off connection is the client's business, not an error of
            // the service's.
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
