//! The local listeners of the outbound direction: the SOCKS5 proxy and the
//! TCP `--forward`s. Each accepted connection is resolved to an overlay
//! target (names from the trust store, in-process) and handed to the stack
//! as a [`StackRequest::Connect`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::Stats;
use super::relay::Origin;
use super::socks5::{self, OverlayPeers, TargetHost};
use super::spec::{ForwardSpec, PeerHost};
use super::stack::StackRequest;
use crate::core::address::NetworkId;

/// SOCKS5 negotiations in progress at most; more clients wait in the
/// kernel's accept queue.
const MAX_NEGOTIATIONS: usize = 1024;
/// Pause after a failed accept (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the listeners share.
#[derive(Clone)]
pub(crate) struct ListenerContext {
    pub(crate) peers: watch::Receiver<OverlayPeers>,
    pub(crate) network: NetworkId,
    pub(crate) requests: mpsc::Sender<StackRequest>,
    pub(crate) stats: Arc<Stats>,
}

/// Accepts SOCKS5 clients until the runtime stops.
pub(crate) async fn serve_socks5(listener: TcpListener, context: ListenerContext) {
    let negotiations = Arc::new(Semaphore::new(MAX_NEGOTIATIONS));
    loop {
        let permit = match negotiations.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => return,
        };
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "socks5: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let context = context.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            socks5_session(stream, client, context).await;
        });
    }
}

async fn socks5_session(
    mut stream: TcpStream,
    client: std::net::SocketAddr,
    context: ListenerContext,
) {
    context.stats.socks_requests.fetch_add(1, Ordering::Relaxed);
    let request = match socks5::negotiate(&mut stream).await {
        Ok(request) => request,
        Err(error) => {
            context.stats.socks_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, %client, "socks5: negotiation failed");
            return;
        }
    };
    let target = {
        let peers = context.peers.borrow();
        socks5::resolve_with_fallback(&request.host, request.port, &peers, context.network)
    };
    match target {
        Ok((target, fallback)) => {
            tracing::debug!(%client, host = ?request.host, %target, ?fallback, "socks5: connect");
            let connect = StackRequest::Connect {
                local: stream,
                target,
                fallback,
                origin: Origin::Socks,
            };
            // Closed: the stack is stopping, and the client with it.
            let _ = context.requests.send(connect).await;
        }
        Err(reply) => {
            context.stats.socks_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, host = ?request.host, ?reply, "socks5: refused");
            let _ = stream.write_all(&socks5::error_reply(reply)).await;
        }
    }
}

/// Accepts connections for one TCP `--forward` until the runtime stops.
pub(crate) async fn serve_forward(
    listener: TcpListener,
    spec: ForwardSpec,
    context: ListenerContext,
) {
    let host = match &spec.peer {
        PeerHost::Name(name) => TargetHost::Name(name.clone()),
        PeerHost::Address(address) => TargetHost::Ip(*address),
    };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, listen = %spec.listen, "forward: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Resolved per connection: trust changes apply at once.
        let target = {
            let peers = context.peers.borrow();
            socks5::resolve_with_fallback(&host, spec.port, &peers, context.network)
        };
        match target {
            Ok((target, fallback)) => {
                let connect = StackRequest::Connect {
                    local: stream,
                    target,
                    fallback,
                    origin: Origin::Forward,
                };
                if context.requests.send(connect).await.is_err() {
                    return;
                }
            }
            Err(reply) => {
                tracing::warn!(%client, peer = %spec.peer, ?reply, "forward: the peer is not reachable; resetting the connection");
                context.stats.tcp_failed.fetch_add(1, Ordering::Relaxed);
                super::relay::reset_on_close(&stream);
            }
        }
    }
}
