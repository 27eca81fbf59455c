//! `agentnet up` and `agentnet down`: the daemon's life cycle. `up`
//! checks what it can on the terminal, then (unless `--foreground`) starts
//! itself again detached with the same options and waits until the daemon
//! answers on its control socket; `down` asks it to stop and waits until
//! the process is gone.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Instance;
use super::LogFormat;
use agentnet::agent::{self, DEFAULT_PORT, DaemonOptions};
use agentnet::control::{ControlClient, ControlError, DaemonInfo, Request, Response};
use agentnet::core::address::IPV4_PREFIX_LEN;
use agentnet::metrics::MetricsListen;
use agentnet::names::resolver_config::HostResolverMode;
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::state::{AgentConfig, StateDir};
use agentnet::sys::nofollow::{OpenFor, open_in_dir};
use agentnet::sys::tun::DEFAULT_INTERFACE;

/// How long `up` waits for the daemon to answer on its control socket.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits for the daemon process to exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `up` and `down` poll.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines shown when a detached daemon fails to start.
const LOG_TAIL_LINES: usize = 25;
/// A log larger than this is moved to `agentnet.log.old` at the next `up`.
const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Arguments of `up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Name of the TUN interface.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INTERFACE)]
    pub(crate) interface: String,
    /// UDP port to listen on (IPv4 and IPv6); 0 picks a free one.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Run in this process instead of detaching; log to stderr.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Tunnel MTU [default: underlay MTU - 92, at least 1280].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1280..))]
    pub(crate) mtu: Option<u16>,
    /// Start a new session first (used by the detaching `up` for its child).
    #[arg(long, hide = true)]
    pub(crate) setsid: bool,
    /// How this host resolves NAME.agent.internal: `auto` (the namespace's
    /// /etc/netns/NAME/hosts in a named network namespace, else
    /// systemd-resolved if it serves the host, else /etc/hosts), `resolved`,
    /// `hosts`, or `off` (only the resolver at PREFIX::53 answers).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub(crate) names: HostResolverMode,
    /// A rendezvous/relay server to register with, as HOST:PORT=ID
    /// (repeatable; added to the config file's `rendezvous` list). Through
    /// it, agents behind NATs find each other, punch holes, or relay.
    #[arg(long = "rendezvous", value_name = "HOST:PORT=ID")]
    pub(crate) rendezvous: Vec<RendezvousSpec>,
    /// Seconds between registration refreshes (they also hold NAT mappings
    /// open; keep it below the NAT's UDP timeout).
    #[arg(long, value_name = "SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) register_interval: u64,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (per-peer RTT,
    /// loss, traffic, drops); loopback only unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address other than loopback.
    #[arg(long, requires = "metrics")]
    pub(crate) metrics_allow_remote: bool,
    /// Once the interface and sockets exist, run as this user (name or
    /// UID) with no capabilities beyond CAP_NET_ADMIN where names need
    /// systemd-resolved [default: `agentnet` if that user exists, else stay
    /// root]. `root` keeps root.
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// IPv6 only: no IPv4 overlay address, route or A records (config.toml:
    /// `ipv4 = false`). By default every agent also has a key-derived
    /// address in 100.64.0.0/10 for software that speaks only IPv4.
    #[arg(long)]
    pub(crate) no_ipv4: bool,
    /// Move one packet per system call: no TUN segmentation offload, no UDP
    /// GSO/GRO (for kernels or devices where they misbehave; slower).
    #[arg(long, env = "AGENTNET_NO_OFFLOAD", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_offload: bool,
    /// Offer only ChaCha20-Poly1305 for the tunnel's packets. By default an
    /// agent whose CPU has AES instructions also offers AES-256-GCM (about
    /// 3x faster there), which a session uses when both peers offer it;
    /// the choice is made inside the encrypted handshake. `agentnet status`
    /// shows each session's cipher.
    #[arg(long, env = "AGENTNET_NO_AES", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_aes: bool,
    /// After a packet, keep polling for the next one for this many
    /// microseconds instead of sleeping (0: sleep at once). A reply that
    /// comes back within the window is taken without a wake-up, which on
    /// a virtual machine can cost ~100 µs per crossing; the
    /// price is CPU while packets flow (at most the window per packet,
    /// yielded to any other runnable thread), none when idle. No window
    /// opens after the daemon has sent the answer to packets it delivered,
    /// the kernel's own (an echo reply, an ACK) or a local program's
    /// within the window: nothing more is owed for them.
    #[arg(long, env = "AGENTNET_BUSY_POLL", value_name = "MICROSECONDS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) busy_poll: u32,
    /// Do not ask the router to forward a public UDP port to this agent.
    /// By default the agent asks the default gateway with PCP, NAT-PMP or
    /// UPnP-IGD (whichever it speaks), announces the mapped endpoint to
    /// peers (a direct path even behind NATs that defeat hole punching),
    /// renews it, and deletes it on `down`.
    #[arg(long)]
    pub(crate) no_port_mapping: bool,
    /// Rootless mode (--userspace, --socks5, --forward, --expose).
    #[command(flatten)]
    pub(crate) rootless: super::userspace::UserspaceArgs,
}

/// `agentnet up`.
pub(super) fn up(context: &Instance, log_format: LogFormat, args: UpArgs) -> Result<()> {
    let metrics = args.metrics.map(|address| MetricsListen {
        address,
        allow_remote: args.metrics_allow_remote,
    });
    if let Some(metrics) = &metrics {
        metrics.check()?;
    }
    args.rootless.check()?;
    if args.foreground {
        if args.setsid {
            detach_from_terminal();
        }
        return Ok(agent::run(DaemonOptions {
            state: context.state.clone(),
            socket: context.socket.clone(),
            interface: args.interface,
            port: args.port,
            mtu: args.mtu,
            names: args.names,
            rendezvous: args.rendezvous,
            register_interval: Some(std::time::Duration::from_secs(args.register_interval)),
            metrics,
            userspace: args.rootless.options(),
            user: args.user,
            offload: !args.no_offload,
            aes: !args.no_aes,
            busy_poll: std::time::Duration::from_micros(args.busy_poll.into()),
            port_mapping: !args.no_port_mapping,
            ipv4: !args.no_ipv4,
        })?);
    }
    let state = &context.state;
    state.create()?;
    agent::privilege::check_state_permissions(state)?;
    agent::privilege::PrivilegeDrop::choose(args.user.as_deref())?;
    // Everything that can be checked without privileges is checked here, so
    // the error reaches the terminal directly rather than through the log.
    let (identity, created) = state.load_or_create_identity()?;
    if created {
        say!(
            "created a new identity in {} (agent {})",
            state.root().display(),
            identity.agent_id()
        );
    }
    if state.load_config()?.is_none() {
        state.write_config(&AgentConfig::default_for_host())?;
    }
    state.load_trust_of(&identity.agent_id())?;
    agentnet::sys::tun::validate_interface_name(&args.interface)?;
    refuse_second_instance(context)?;

    let log_path = state.log_path();
    let (log, log_start) = open_log(state)?;
    let program = std::env::current_exe().context("cannot find own executable")?;
    let mut command = daemon_command(&program, context, log_format, &args);
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    let child = command.spawn().context("cannot start the daemon")?;
    let info = wait_until_ready(context, child, &log_path, log_start)?;
    say!("agentnet is up (pid {})", info.pid);
    say!("  id         {}", info.id);
    say!("  address    {}/48 on {}", info.address, info.interface);
    match info.address4 {
        Some(address4) => say!(
            "  address4   {address4}/{IPV4_PREFIX_LEN} on {}",
            info.interface
        ),
        None => say!("  address4   none (IPv4 is off)"),
    }
    say!("  name       {} (network {})", info.name, info.network);
    say!("  port       {}/udp", info.port);
    say!("  mtu        {}", info.mtu);
    say!("  log        {}", log_path.display());
    if args.rootless.userspace {
        super::userspace::say_listeners(&context.socket);
    }
    if let Some(address) = args.metrics {
        say!("  metrics    http://{address}/metrics");
    }
    Ok(())
}

/// The detached daemon's command line: this `up` with `--foreground
/// --setsid` and every option passed on (the round-trip test below fails
/// for an option that is not).
fn daemon_command(
    program: &Path,
    context: &Instance,
    log_format: LogFormat,
    args: &UpArgs,
) -> Process {
    let mut command = Process::new(program);
    command
        .arg("--state-dir")
        .arg(context.state.root())
        .arg("--socket")
        .arg(&context.socket)
        .args(["--log-format", log_format.as_arg()])
        .args(["up", "--foreground", "--setsid", "--interface"])
        .arg(&args.interface)
        .args(["--port", &args.port.to_string()]);
    if let Some(mtu) = args.mtu {
        command.args(["--mtu", &mtu.to_string()]);
    }
    command.args(["--names", &args.names.to_string()]);
    for spec in &args.rendezvous {
        command.args(["--rendezvous", &spec.to_string()]);
    }
    command.args(["--register-interval", &args.register_interval.to_string()]);
    if args.no_ipv4 {
        command.arg("--no-ipv4");
    }
    if args.no_offload {
        command.arg("--no-offload");
    }
    if args.no_aes {
        command.arg("--no-aes");
    }
    command.args(["--busy-poll", &args.busy_poll.to_string()]);
    if args.no_port_mapping {
        command.arg("--no-port-mapping");
    }
    if let Some(address) = args.metrics {
        command.args(["--metrics", &address.to_string()]);
        if args.metrics_allow_remote {
            command.arg("--metrics-allow-remote");
        }
    }
    args.rootless.add_child_args(&mut command);
    if let Some(user) = &args.user {
        command.args(["--user", user]);
    }
    command
}

/// Makes the detached daemon its own session leader, so the terminal that
/// ran `up` closing does not signal it, and lets go of the working directory.
fn detach_from_terminal() {
    if let Err(errno) = nix::unistd::setsid() {
        tracing::debug!(%errno, "setsid failed (already a session leader?)");
    }
    if let Err(errno) = nix::unistd::chdir("/") {
        tracing::debug!(%errno, "cannot change to /");
    }
}

fn refuse_second_instance(context: &Instance) -> Result<()> {
    match ControlClient::call(&context.socket, &Request::Hello {}) {
        Ok(Response::Hello(info)) => bail!(
            "agentnet is already running for {} (pid {}, interface {}, control socket {}); \
             stop it with `agentnet down`",
            info.state_dir.display(),
            info.pid,
            info.interface,
            context.socket.display()
        ),
        Ok(_) => bail!(
            "something already answers on {}; is another agentnet using it?",
            context.socket.display()
        ),
        Err(ControlError::NotRunning { .. }) => {}
        Err(error) => {
            return Err(anyhow!(error).context(format!(
                "{} exists but does not answer as an agentnet control socket",
                context.socket.display()
            )));
        }
    }
    if let Some(pid) = context.state.running_pid() {
        return Err(context.unresponsive(pid));
    }
    Ok(())
}

/// Opens the daemon's log for appending. The daemon's user owns the state
/// directory: a link planted at the log's name is refused, not followed.
fn open_log(state: &StateDir) -> Result<(File, u64)> {
    let path = state.log_path();
    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(&path, state.root().join(agentnet::state::OLD_LOG_FILE));
    }
    let log = state.open_file(agentnet::state::LOG_FILE, OpenFor::Append(0o600))?;
    let start = log.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((log, start))
}

fn wait_until_ready(
    context: &Instance,
    mut child: Child,
    log_path: &Path,
    log_start: u64,
) -> Result<DaemonInfo> {
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait().context("cannot watch the daemon")? {
            bail!(
                "the daemon exited during start-up ({exit}); {}:\n{}",
                log_path.display(),
                log_tail(log_path, log_start)
            );
        }
        if let Ok(Response::Hello(info)) = ControlClient::call(&context.socket, &Request::Hello {})
        {
            if info.pid == child.id() {
                return Ok(info);
            }
            bail!(
                "another agentnet (pid {}) took over {} while this one started",
                info.pid,
                context.socket.display()
            );
        }
        if Instant::now() >= deadline {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let _ = child.wait();
            bail!(
                "the daemon did not become ready within {} s and was stopped; {}:\n{}",
                UP_TIMEOUT.as_secs(),
                log_path.display(),
                log_tail(log_path, log_start)
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The last lines written to the log since `start`.
fn log_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    let opened = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => open_in_dir(dir, name, OpenFor::Read).ok(),
        _ => None,
    };
    if let Some(mut file) = opened
        && file.seek(SeekFrom::Start(start)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() {
        "(the log is empty)".to_string()
    } else {
        tail
    }
}

/// `agentnet down`.
pub(super) fn down(context: &Instance) -> Result<()> {
    let mut client = context.require_daemon()?;
    let pid = match client.request(&Request::Down {}) {
        Ok(Response::Stopping { pid }) => pid,
        Ok(other) => bail!("unexpected answer to `down`: {other:?}"),
        // It may have gone before it could answer.
        Err(ControlError::Closed) => match context.state.running_pid() {
            Some(pid) => pid,
            None => {
                say!("agentnet stopped");
                return Ok(());
            }
        },
        Err(error) => return Err(error.into()),
    };
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "agentnet (pid {pid}) was asked to stop but is still running after {} s",
                DOWN_TIMEOUT.as_secs()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
    say!("agentnet stopped (pid {pid})");
    Ok(())
}

/// Whether a process exists and has a thread that is not a zombie. A
/// process whose threads all exited has released its interface and
/// sockets; its main thread alone can be a zombie while the datapath thread
/// still holds them.
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // /proc/PID/task/TID/stat: "tid (comm) STATE ..."; comm may hold
    // spaces and ')'.
    let running = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X")
    };
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.filter_map(Result::ok).any(|task| {
            fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| running(&stat))
        }),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    #[test]
    fn up_defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["agentnet", "up"]).expect("parses");
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.interface, "agentnet0");
        assert_eq!(args.port, 7400);
        assert!(!args.foreground);
        assert_eq!(args.mtu, None);
        assert!(Cli::try_parse_from(["agentnet", "up", "--mtu", "1000"]).is_err());
    }

    #[test]
    fn up_refuses_remote_socks5_and_forward_binds_without_allow_remote() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["agentnet", "up", "--userspace"];
            argv.extend_from_slice(extra);
            let cli = Cli::try_parse_from(argv).expect("parses");
            let Command::Up(args) = cli.command else {
                panic!("not up");
            };
            args.rootless
        };
        let refused = parse(&["--socks5", "0.0.0.0:1080"])
            .check()
            .expect_err("refused");
        assert!(refused.to_string().contains("--allow-remote"), "{refused}");
        assert!(parse(&["--forward", "[::]:8080:bob:80"]).check().is_err());
        parse(&["--socks5", "127.0.0.1:1080", "--forward", "8080:bob:80"])
            .check()
            .expect("loopback");
        let allowed = parse(&["--socks5", "0.0.0.0:1080", "--allow-remote"]);
        allowed.check().expect("--allow-remote");
        let mut child = Process::new("agentnet");
        allowed.add_child_args(&mut child);
        assert!(
            child.get_args().any(|arg| arg == "--allow-remote"),
            "the detached daemon gets --allow-remote too"
        );
        assert!(Cli::try_parse_from(["agentnet", "up", "--allow-remote"]).is_err());
    }

    #[test]
    fn the_detached_daemon_gets_every_option_of_up() {
        let id = agentnet::core::identity::Identity::from_secret_bytes(&[9; 32])
            .expect("key")
            .agent_id();
        let rendezvous = format!("192.0.2.1:7401={id}");
        // Every flag of `up` set to a value other than its default.
        let argv = [
            "agentnet",
            "--state-dir",
            "/tmp/agentnet-state",
            "--socket",
            "/tmp/agentnet.sock",
            "--log-format",
            "json",
            "up",
            "--interface",
            "an-test0",
            "--port",
            "7499",
            "--mtu",
            "1300",
            "--names",
            "hosts",
            "--rendezvous",
            &rendezvous,
            "--rendezvous",
            &format!("[2001:db8::1]:7402={id}"),
            "--register-interval",
            "17",
            "--metrics",
            "0.0.0.0:9464",
            "--metrics-allow-remote",
            "--user",
            "nobody",
            "--no-ipv4",
            "--no-offload",
            "--no-aes",
            "--no-port-mapping",
            "--userspace",
            "--socks5",
            "0.0.0.0:1080",
            "--forward",
            "8080:bob:80",
            "--forward",
            "udp:127.0.0.1:5353:carol:53",
            "--expose",
            "22",
            "--expose",
            "udp:5000:127.0.0.1:5001",
            "--allow-remote",
        ];
        let cli = Cli::try_parse_from(argv).expect("the full command line parses");
        let context = Instance::new(&cli).expect("paths");
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        let command = daemon_command(Path::new("agentnet"), &context, cli.log_format, &args);
        let child_argv: Vec<OsString> = std::iter::once(command.get_program().to_owned())
            .chain(command.get_args().map(OsString::from))
            .collect();
        let child = Cli::try_parse_from(&child_argv).expect("the child's command line parses");
        assert_eq!(child.state_dir, PathBuf::from("/tmp/agentnet-state"));
        assert_eq!(child.socket, Some(PathBuf::from("/tmp/agentnet.sock")));
        assert_eq!(child.log_format, LogFormat::Json);
        let Command::Up(child_args) = child.command else {
            panic!("the child does not run up");
        };
        assert!(child_args.foreground && child_args.setsid);
        let expected = UpArgs {
            foreground: true,
            setsid: true,
            ..args
        };
        assert_eq!(format!("{child_args:?}"), format!("{expected:?}"));
    }
}
