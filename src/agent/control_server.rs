//! The daemon's side of the control socket: accepts connections, reads JSON
//! lines, turns each request into a [`Command`] for the event loop (which owns
//! the node) and writes back the loop's answer. See [`crate::control`] for
//! the protocol.

use std::collections::HashMap;
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
/// How many connections one user may hold at once (root and the daemon's
/// own user excepted: see [`ConnectionLimits`]).
const MAX_CONNECTIONS_PER_USER: usize = 16;

/// Who may hold how many connections. Each holds a task, a socket and up
/// to [`MAX_REQUEST_LEN`] of buffered request: a local user who opens
/// connections and never closes them gets refused ones past its share,
/// not a daemon out of file descriptors or memory, and cannot take the
/// socket from root or the daemon's user, who have no bound.
#[derive(Debug, Clone)]
struct ConnectionLimits {
    per_user: usize,
    /// Whether root and the daemon's user are exempt (tests bound them).
    exempt_root_and_daemon: bool,
}

impl ConnectionLimits {
    fn for_daemon() -> Self {
        Self {
            per_user: MAX_CONNECTIONS_PER_USER,
            exempt_root_and_daemon: true,
        }
    }

    /// Whether `uid` has a bound, `daemon_uid` being the user the daemon
    /// runs as when the connection arrives: the socket is bound before the
    /// daemon drops its privileges, so its user is only known then.
    fn bounds(&self, uid: u32, daemon_uid: u32) -> bool {
        !(self.exempt_root_and_daemon && (uid == 0 || uid == daemon_uid))
    }
}

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
        let limits = ConnectionLimits::for_daemon();
        let task = tokio::spawn(accept_loop(
            listener,
            requests,
            shutdown_rx,
            control_gid,
            limits,
        ));
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
    limits: ConnectionLimits,
) {
    // Each connection's task returns its user's ID; the count per user
    // goes down when it does.
    let mut connections = JoinSet::new();
    let mut per_user: HashMap<u32, usize> = HashMap::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Unknown credentials share one count.
                    let uid = stream.peer_cred().map_or(u32::MAX, |cred| cred.uid());
                    let held = per_user.entry(uid).or_default();
                    let daemon_uid = nix::unistd::geteuid().as_raw();
                    if *held >= limits.per_user && limits.bounds(uid, daemon_uid) {
                        refuse_connection(&stream, uid, limits.per_user);
                        continue;
                    }
                    *held += 1;
                    let access = ControlAccess::of_stream(&stream, control_gid);
                    let served = serve_connection(stream, access, requests.clone(), shutdown.clone());
                    connections.spawn(async move {
                        served.await;
                        uid
                    });
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Ok(uid) = done
                    && let Some(held) = per_user.get_mut(&uid)
                {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        per_user.remove(&uid);
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// Tells a client past its user's share why it is closed, if its socket
/// takes the line at once (the accept loop does not wait for it).
fn refuse_connection(stream: &UnixStream, uid: u32, limit: usize) {
    let refusal = Response::Error(format!(
        "too many control connections: user {uid} holds {limit} already; try again when one closes"
    ));
    if let Ok(mut line) = serde_json::to_vec(&refusal) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
    tracing::warn!(
        uid,
        limit,
        "control socket: a connection was refused, its user holds too many"
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
        Request::Hello {} => Command::Hello,
        Request::Status {} => Command::Status,
        Request::TrustList {} => Command::TrustList,
        Request::TrustRemove { peer } => Command::TrustRemove { peer },
        Request::Down {} => Command::Down,
        Request::ReloadAttachments {} => Command::ReloadAttachments,
        request @ (Request::ServeAdd(_) | Request::ServeList {} | Request::ServeOff { .. }) => {
            Command::Serve(request)
        }
        // Checked here: the client may not be our CLI, and an entry that
        // fails the state file's own check would lock every later edit out.
        Request::AdvertiseAdd(service) => {
            service.validate().map_err(|e| e.to_string())?;
            Command::Advertise(Request::AdvertiseAdd(service))
        }
        request @ (Request::AdvertiseList {} | Request::AdvertiseOff { .. }) => {
            Command::Advertise(request)
        }
        Request::Services {} => Command::Services,
        Request::Ping { .. } => return Err("ping requests are served by ping::answer".to_string()),
        request @ (Request::TrustRequest { .. }
        | Request::TrustPending {}
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

    /// An accept loop with `limits` on a socket of its own; dropping the
    /// returned guard stops it and removes the socket.
    struct TestServer {
        dir: PathBuf,
        path: PathBuf,
        shutdown: watch::Sender<bool>,
        _queue: mpsc::Receiver<ControlRequest>,
    }

    impl TestServer {
        fn start(label: &str, limits: ConnectionLimits) -> Self {
            let dir =
                std::env::temp_dir().join(format!("agentnet-ctl-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("control.sock");
            let listener = UnixListener::bind(&path).expect("bound");
            let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
            let (shutdown, shutdown_rx) = watch::channel(false);
            tokio::spawn(accept_loop(listener, requests, shutdown_rx, None, limits));
            Self {
                dir,
                path,
                shutdown,
                _queue: queue,
            }
        }

        /// A connection that sent nothing (so nothing is answered on it).
        async fn idle(&self) -> UnixStream {
            UnixStream::connect(&self.path).await.expect("connected")
        }

        /// The answer to a request on a new connection.
        async fn ask(&self, request: &[u8]) -> String {
            let (read, mut write) = self.idle().await.into_split();
            write.write_all(request).await.expect("sent");
            let mut line = String::new();
            BufReader::new(read)
                .read_line(&mut line)
                .await
                .expect("read");
            line
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            let _ = self.shutdown.send(true);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test]
    async fn connections_past_a_users_share_are_refused_with_the_reason() {
        // The test's own user (root in CI) has a bound here.
        let limits = ConnectionLimits {
            per_user: 4,
            exempt_root_and_daemon: false,
        };
        let server = TestServer::start("bounded", limits.clone());
        let mut idle = Vec::new();
        for _ in 0..limits.per_user {
            idle.push(server.idle().await);
        }
        let refused = server.ask(b"{}\n").await;
        assert!(
            refused.contains("too many control connections"),
            "{refused:?}"
        );
        // One closes: the next client is served again (a bad request gets
        // its error, not the refusal) once the loop saw it close.
        drop(idle.pop());
        let served = loop {
            let answer = server.ask(b"{}\n").await;
            if !answer.contains("too many") {
                break answer;
            }
            tokio::task::yield_now().await;
        };
        assert!(served.contains("bad request"), "{served:?}");
    }

    #[tokio::test]
    async fn root_and_the_daemons_user_are_never_refused() {
        let limits = ConnectionLimits {
            per_user: 1,
            exempt_root_and_daemon: true,
        };
        let server = TestServer::start("unbounded", limits);
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(server.idle().await);
        }
        let served = server.ask(b"{}\n").await;
        assert!(served.contains("bad request"), "{served:?}");
    }

    #[test]
    fn the_daemons_user_is_the_one_it_runs_as_when_a_client_connects() {
        // Bound as root, running as 990 after the drop: 990's scraper and
        // root are exempt, another user is not.
        let limits = ConnectionLimits::for_daemon();
        assert!(!limits.bounds(990, 990));
        assert!(!limits.bounds(0, 990));
        assert!(limits.bounds(1000, 990));
        assert!(limits.bounds(990, 0), "a daemon that stayed root");
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
