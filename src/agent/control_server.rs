//! The daemon's side of the control socket: accepts connections, reads JSON
//! lines, turns each request into a [`Command`] for the event loop (which owns
//! the node) and writes back the loop's answer. See [`crate::control`] for
//! the protocol.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::Mode;
use nix::unistd::Gid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::commands::{Command, ControlRequest, trust_op_of};
use super::privilege::ControlAccess;
use crate::control::{MAX_REQUEST_LEN, Request, Response};
use crate::core::trust::store::{TrustUpdate, validate_name};
use crate::sys::udp::resolve_endpoint;

/// Permission bits of the control socket: owner and group may control the
/// daemon.
pub(crate) const SOCKET_MODE: u32 = 0o660;
/// How long shutdown waits for connections to finish writing their answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How many requests may wait for the event loop at once.
const QUEUE_DEPTH: usize = 64;
/// How many clients may be connected at once. Each holds a task, a socket
/// and up to [`MAX_REQUEST_LEN`] of buffered request: a local user who
/// opens connections and never closes them gets refused ones past this
/// bound, not a daemon out of file descriptors or memory.
const MAX_CONNECTIONS: usize = 64;

/// The listening control socket and its connections.
#[derive(Debug)]
pub(crate) struct ControlServer {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds the socket (replacing a stale socket file nobody answers on),
    /// gives it to the `agentnet` group (`control_gid`, if it exists) and
    /// starts accepting. Returns the server and the queue of requests.
    pub(crate) fn bind(
        path: &Path,
        control_gid: Option<Gid>,
    ) -> io::Result<(Self, mpsc::Receiver<ControlRequest>)> {
        remove_stale_socket(path)?;
        let listener = bind_with_mode(path)?;
        super::privilege::share_socket_with_group(path, control_gid);
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let control_gid = control_gid.map(Gid::as_raw);
        let task = tokio::spawn(accept_loop(listener, requests, shutdown_rx, control_gid));
        let server = Self {
            path: path.to_path_buf(),
            shutdown,
            task,
        };
        Ok((server, queue))
    }

    /// Removes the socket file (new clients see "not running"), stops
    /// accepting, and gives open connections a moment to write the answers
    /// they already have.
    pub(crate) async fn shutdown(self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "cannot remove control socket");
        }
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT * 2, self.task).await;
    }
}

/// Binds the socket so that it is born with [`SOCKET_MODE`]: the umask
/// decides the mode `bind` gives it, so there is no moment when it exists
/// with a looser one, and no `chmod` by path afterwards (which would follow
/// a link planted in its place).
fn bind_with_mode(path: &Path) -> io::Result<UnixListener> {
    let umask = Mode::from_bits_truncate(0o777 & !SOCKET_MODE);
    let previous = nix::sys::stat::umask(umask);
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    bound
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process answers on this socket",
        ));
    }
    fs::remove_file(path)
}

async fn accept_loop(
    listener: UnixListener,
    requests: mpsc::Sender<ControlRequest>,
    mut shutdown: watch::Receiver<bool>,
    control_gid: Option<u32>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => {
                    refuse_connection(&stream);
                }
                Ok((stream, _)) => {
                    let access = ControlAccess::of_stream(&stream, control_gid);
                    connections.spawn(serve_connection(
                        stream,
                        access,
                        requests.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// Tells a client past [`MAX_CONNECTIONS`] why it is closed, if its socket
/// takes the line at once (the accept loop does not wait for it).
fn refuse_connection(stream: &UnixStream) {
    let refusal = Response::Error(format!(
        "too many control connections ({MAX_CONNECTIONS}) are open; try again when one closes"
    ));
    if let Ok(mut line) = serde_json::to_vec(&refusal) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
    tracing::warn!(
        limit = MAX_CONNECTIONS,
        "control socket: a connection was refused, too many are open"
    );
}

/// Serves one client; `access` (who may change the agent) was decided
/// once, from its credentials.
async fn serve_connection(
    stream: UnixStream,
    access: ControlAccess,
    requests: mpsc::Sender<ControlRequest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut line = Vec::new();
        // One byte over the limit tells an over-long line from a full one.
        let mut limited = (&mut reader).take(MAX_REQUEST_LEN as u64 + 1);
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut line) => read,
            _ = shutdown.changed() => break,
        };
        let (response, keep_open) = match read {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_REQUEST_LEN => (
                Response::Error(format!("request longer than {MAX_REQUEST_LEN} bytes")),
                false,
            ),
            Ok(_) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(_) => (answer(&line, &requests, access).await, true),
        };
        if write_response(&mut write, &response).await.is_err() || !keep_open {
            break;
        }
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|error| {
        // Only non-string map keys fail; none of ours has them.
        format!(r#"{{"error":"cannot encode response: {error}"}}"#).into_bytes()
    });
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.flush().await
}

async fn answer(
    line: &[u8],
    requests: &mpsc::Sender<ControlRequest>,
    access: ControlAccess,
) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(error) => return Response::Error(format!("bad request: {error}")),
    };
    if let Err(refusal) = access.check(&request) {
        return Response::Error(refusal);
    }
    if let Request::Ping { peer, timeout_ms } = request {
        return super::ping::answer(peer, timeout_ms, requests).await;
    }
    let command = match command_of(request).await {
        Ok(command) => command,
        Err(message) => return Response::Error(message),
    };
    let (reply, answer) = oneshot::channel();
    if requests
        .send(ControlRequest { command, reply })
        .await
        .is_err()
    {
        return Response::Error("the daemon is shutting down".to_string());
    }
    answer
        .await
        .unwrap_or_else(|_| Response::Error("the daemon is shutting down".to_string()))
}

/// Validates a request and does its slow parts (DNS) here, off the event
/// loop.
async fn command_of(request: Request) -> Result<Command, String> {
    Ok(match request {
        Request::Hello => Command::Hello,
        Request::Status => Command::Status,
        Request::TrustList => Command::TrustList,
        Request::TrustRemove { peer } => Command::TrustRemove { peer },
        Request::Down => Command::Down,
        Request::ReloadAttachments => Command::ReloadAttachments,
        request @ (Request::ServeAdd(_) | Request::ServeList | Request::ServeOff { .. }) => {
            Command::Serve(request)
        }
        // Checked here: the client may not be our CLI, and an entry that
        // fails the state file's own check would lock every later edit out.
        Request::AdvertiseAdd(service) => {
            service.validate().map_err(|e| e.to_string())?;
            Command::Advertise(Request::AdvertiseAdd(service))
        }
        request @ (Request::AdvertiseList | Request::AdvertiseOff { .. }) => {
            Command::Advertise(request)
        }
        Request::Services => Command::Services,
        Request::Ping { .. } => return Err("ping requests are served by ping::answer".to_string()),
        request @ (Request::TrustRequest { .. }
        | Request::TrustPending
        | Request::TrustApprove { .. }
        | Request::TrustDeny { .. }) => Command::TrustOp(trust_op_of(request).await?),
        Request::TrustAdd {
            id,
            name,
            endpoint,
            allow,
        } => {
            validate_name(&name).map_err(|e| e.to_string())?;
            let resolved = match &endpoint {
                Some(text) => {
                    let text = text.clone();
                    let resolved = tokio::task::spawn_blocking(move || resolve_endpoint(&text))
                        .await
                        .map_err(|e| format!("endpoint resolution failed: {e}"))?
                        .map_err(|e| e.to_string())?;
                    Some(resolved)
                }
                None => None,
            };
            Command::TrustAdd {
                update: TrustUpdate {
                    id,
                    name,
                    endpoint,
                    allow,
                },
                endpoint: resolved,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_past_the_bound_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("agentnet-ctl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).expect("bound");
        let (requests, _queue) = mpsc::channel(QUEUE_DEPTH);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(accept_loop(listener, requests, shutdown_rx, None));
        let ask = async |stream: UnixStream| {
            let (read, mut write) = stream.into_split();
            write.write_all(b"\n").await.expect("sent");
            let mut line = String::new();
            BufReader::new(read)
                .read_line(&mut line)
                .await
                .expect("read");
            line
        };
        // Idle clients hold every slot; each was accepted (a blank line is
        // read and skipped, so the server is not answering it).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(UnixStream::connect(&path).await.expect("connected"));
        }
        let refused = ask(UnixStream::connect(&path).await.expect("connected")).await;
        assert!(
            refused.contains("too many control connections"),
            "{refused:?}"
        );
        // One closes: the next client is served again (a bad request gets
        // its error, not the refusal).
        drop(idle.pop());
        let served = loop {
            let stream = UnixStream::connect(&path).await.expect("connected");
            let (read, mut write) = stream.into_split();
            write.write_all(b"{}\n").await.expect("sent");
            let mut line = String::new();
            BufReader::new(read)
                .read_line(&mut line)
                .await
                .expect("read");
            if !line.contains("too many") {
                break line;
            }
            tokio::task::yield_now().await;
        };
        assert!(served.contains("bad request"), "{served:?}");
        let _ = shutdown.send(true);
        drop(idle);
        server.await.expect("joined");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_advertisement_the_state_file_would_refuse_is_refused_at_once() {
        for bad in [
            r#"{"cmd":"advertise_add","kind":"mcp","port":0}"#,
            r#"{"cmd":"advertise_add","kind":"mcp","port":8000,"path":"/a\nb"}"#,
            r#"{"cmd":"advertise_add","kind":"mcp","port":8000,"name":"\u001b[31m"}"#,
        ] {
            let request: Request = serde_json::from_str(bad).expect("well-formed JSON");
            assert!(command_of(request).await.is_err(), "accepted {bad}");
        }
        let good =
            r#"{"cmd":"advertise_add","kind":"mcp","port":8000,"path":"/mcp","name":"notes"}"#;
        let request: Request = serde_json::from_str(good).expect("well-formed JSON");
        assert!(matches!(
            command_of(request).await,
            Ok(Command::Advertise(_))
        ));
    }
}
