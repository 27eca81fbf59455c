//! `serve --tcp`: a connection from a peer spliced to the target.
//!
//! `copy_bidirectional` moves bytes both ways through one fixed buffer per
//! direction (backpressure: it reads only as fast as the other side takes),
//! and passes a half-close on: when one side shuts down its writing, the
//! other side's writing is shut down and the opposite direction goes on.
//! A target that does not accept gets the peer a reset (`SO_LINGER` 0),
//! as if the port were closed, and a log line that says why.

use std::time::Duration;

use tokio::net::TcpStream;

use super::{Caller, ServeSpec};

/// How long connecting to the target may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Splices `inbound` (from `caller`) to the target of `spec`.
pub(crate) async fn splice(mut inbound: TcpStream, caller: &Caller, spec: &ServeSpec) {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(spec.target)).await;
    let mut outbound = match connected {
        Ok(Ok(outbound)) => outbound,
        Ok(Err(error)) => return reset(inbound, caller, spec, &error.to_string()),
        Err(_) => return reset(inbound, caller, spec, "connect timed out"),
    };
    let _ = outbound.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        Ok((to_target, to_peer)) => tracing::debug!(
            port = spec.port,
            peer = %caller.name,
            id = %caller.id,
            to_target,
            to_peer,
            "served connection closed"
        ),
        Err(error) => tracing::debug!(
            port = spec.port,
            peer = %caller.name,
            %error,
            "served connection ended with an error"
        ),
    }
}

/// Closes `inbound` with a reset, logging why the target was not reached.
fn reset(inbound: TcpStream, caller: &Caller, spec: &ServeSpec, why: &str) {
    tracing::warn!(
        port = spec.port,
        target = %spec.target,
        peer = %caller.name,
        id = %caller.id,
        error = why,
        "the served target does not accept connections (is the service running?); resetting the peer's connection"
    );
    // A zero linger makes the close send RST at once and never blocks.
    if let Err(error) = inbound.set_zero_linger() {
        tracing::debug!(%error, "cannot set SO_LINGER 0; closing normally");
    }
    drop(inbound);
}
