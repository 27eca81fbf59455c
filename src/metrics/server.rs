//! The HTTP side of `--metrics`: the loopback rule, a minimal HTTP/1.1
//! server for `GET /metrics` (bounded connections, head size and time), and
//! the agent's scrape, which reads `status` from its own control socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, agent_metrics};

/// Longest request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Scrapes served at once; more wait.
const MAX_CONNECTIONS: usize = 16;
/// Time a scraper gets to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest status answer read from the control socket.
const MAX_STATUS_LEN: u64 = 16 * 1024 * 1024;

/// Where to serve metrics, and whether a non-loopback address is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen {
    /// TCP address to listen on.
    pub address: SocketAddr,
    /// Allow an address other than loopback.
    pub allow_remote: bool,
}

/// Why metrics cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A non-loopback address without `--metrics-allow-remote`.
    #[error(
        "refusing to serve metrics on {0}: not a loopback address (use 127.0.0.1 or [::1], or add --metrics-allow-remote)"
    )]
    NotLoopback(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot serve metrics on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl MetricsListen {
    /// Checks the loopback rule.
    pub fn check(&self) -> Result<(), MetricsError> {
        if self.address.ip().is_loopback() || self.allow_remote {
            Ok(())
        } else {
            Err(MetricsError::NotLoopback(self.address))
        }
    }

    /// Checks the loopback rule and binds the listener.
    pub async fn bind(&self) -> Result<TcpListener, MetricsError> {
        self.check()?;
        TcpListener::bind(self.address)
            .await
            .map_err(|source| MetricsError::Bind {
                address: self.address,
                source,
            })
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `render`
/// produces the body (or an error message, answered with 503).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let served =
                tokio::time::timeout(CONNECTION_TIMEOUT, serve_connection(stream, render)).await;
            if let Ok(Err(error)) = served {
                tracing::debug!(%peer, %error, "metrics connection failed");
            }
            drop(permit);
        });
    }
}

async fn serve_connection<F, Fut>(stream: TcpStream, render: F) -> io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_HEAD as u64));
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    // The rest of the head is read and ignored.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match render().await {
            Ok(body) => ("200 OK", CONTENT_TYPE, body),
            Err(error) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{error}\n"),
            ),
        },
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "agentnet metrics: GET /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        write.write_all(body.as_bytes()).await?;
    }
    write.shutdown().await
}

/// Asks the daemon on `socket` for its status (as `agentnet status --json`).
pub async fn fetch_status(socket: &Path) -> Result<Value, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|error| format!("control socket {}: {error}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"cmd\":\"status\"}\n")
        .await
        .map_err(|error| format!("control socket: {error}"))?;
    let mut line = Vec::new();
    BufReader::new(read.take(MAX_STATUS_LEN))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|error| format!("control socket: {error}"))?;
    let mut answer: Value =
        serde_json::from_slice(&line).map_err(|error| format!("bad status answer: {error}"))?;
    match answer.get_mut("status") {
        Some(status) => Ok(status.take()),
        None => Err(format!("the daemon answered {answer}")),
    }
}

/// Binds the agent's metrics listener and serves it in a task, reading the
/// daemon's status from `socket` at each scrape.
pub async fn spawn_agent(
    listen: MetricsListen,
    socket: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = listen.bind().await?;
    tracing::info!(address = %listen.address, "serving metrics on /metrics");
    let socket = Arc::new(socket);
    Ok(tokio::spawn(serve(listener, move || {
        let socket = Arc::clone(&socket);
        async move {
            fetch_status(&socket)
                .await
                .map(|status| agent_metrics(&status))
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        let remote = MetricsListen {
            address: "0.0.0.0:9100".parse().expect("addr"),
            allow_remote: false,
        };
        assert!(matches!(remote.check(), Err(MetricsError::NotLoopback(_))));
        assert!(
            MetricsListen {
                allow_remote: true,
                ..remote
            }
            .check()
            .is_ok()
        );
        for local in ["127.0.0.1:9100", "[::1]:9100"] {
            let listen = MetricsListen {
                address: local.parse().expect("addr"),
                allow_remote: false,
            };
            assert!(listen.check().is_ok());
        }
    }
}
