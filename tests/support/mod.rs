//! Test support: a network-namespace lab, a driver for the `agentnet` CLI,
//! a pcap reader, and polling helpers.
//!
//! Every test crate that says `mod support;` compiles all of this, and uses
//! only part of it, hence the `dead_code` allowance.
//!
//! Network hygiene: a [`Lab`] puts every address it configures inside network
//! namespaces it created itself; they have no link to the host's network, so
//! nothing a test sends can leave them.
#![allow(dead_code)]

pub mod agent;
pub mod apps;
pub mod capture;
pub mod dig;
pub mod http;
pub mod lab;
pub mod natlab;
pub mod pcap;
pub mod rootless;
pub mod watch;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// Re-exports for the test crates; not every crate uses each of them.
#[allow(unused_imports)]
pub use agent::Agent;
#[allow(unused_imports)]
pub use lab::{Host, Lab};

/// Env var: when `1`, a test that cannot build namespaces fails instead of
/// skipping (CI sets it, so the namespace tests can never silently not run).
pub const REQUIRE_NETNS_ENV: &str = "AGENTNET_REQUIRE_NETNS";

/// How often the wait helpers re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// At the top of a namespace test: whether it may run, and what its
/// further [`Requirement`] found. Evaluates to `Some(found)`, or says why it
/// cannot run and gives `None` (the test returns and counts as skipped; with
/// `AGENTNET_REQUIRE_NETNS=1` it fails instead). The test's name comes from
/// the function it is written in.
///
/// ```text
/// let Some(()) = support::netns_ready!(TOOLS) else { return };
/// let Some(python) = support::netns_ready!(TOOLS, Python(MODULES)) else { return };
/// ```
///
/// `TOOLS` are the programs the test runs inside the namespaces (`ip` is
/// always checked).
macro_rules! netns_ready {
    ($tools:expr) => {
        $crate::support::netns_ready!($tools, ())
    };
    ($tools:expr, $need:expr) => {{
        fn this_test() {}
        $crate::support::netns_ready_for(::std::any::type_name_of_val(&this_test), $tools, &$need)
    }};
}
#[allow(unused_imports)]
pub(crate) use netns_ready;

/// Something a namespace test needs besides root, `ip` and its tools.
pub trait Requirement {
    /// What the check found (a path, say), for the test to use.
    type Found;
    /// What was found, or why the test cannot run.
    fn check(&self) -> Result<Self::Found, String>;
}

/// No further requirement.
impl Requirement for () {
    type Found = ();
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A user with this UID exists (to switch to).
pub struct UserExists(pub u32);

impl Requirement for UserExists {
    type Found = ();
    fn check(&self) -> Result<(), String> {
        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.0)) {
            Ok(Some(_)) => Ok(()),
            _ => Err(format!("no user with UID {}", self.0)),
        }
    }
}

/// What [`netns_ready!`] does: `here` is the type name of a function item
/// inside the test (`crate::path::test::this_test`).
pub fn netns_ready_for<R: Requirement>(here: &str, tools: &[&str], need: &R) -> Option<R::Found> {
    let path = here.strip_suffix("::this_test").unwrap_or(here);
    let test = path.split_once("::").map_or(path, |(_, test)| test);
    if !require_root_or_skip(test, tools) {
        return None;
    }
    match need.check() {
        Ok(found) => Some(found),
        Err(reason) => {
            skip_or_fail(test, &reason);
            None
        }
    }
}

/// Returns whether this test may build network namespaces; if not, says why
/// (see [`skip_or_fail`]) and returns false, so the test can `return` and
/// count as skipped.
///
/// `tools` are the programs the test runs inside the namespaces (`ip` is
/// always checked).
pub fn require_root_or_skip(test: &str, tools: &[&str]) -> bool {
    match netns_unavailable_reason(tools) {
        None => true,
        Some(reason) => {
            skip_or_fail(test, &reason);
            false
        }
    }
}

/// Says on the real stderr (not swallowed by the test harness) that `test`
/// is skipped and why; with `AGENTNET_REQUIRE_NETNS=1` panics instead.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var(REQUIRE_NETNS_ENV).as_deref() == Ok("1") {
        panic!("{test}: {reason}, and {REQUIRE_NETNS_ENV}=1 forbids skipping");
    }
    say(&format!(
        "SKIPPED {test}: {reason} (set {REQUIRE_NETNS_ENV}=1 to make this a failure)"
    ));
}

/// Why namespace tests cannot run here, or `None` if they can.
pub fn netns_unavailable_reason(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not running as root (network namespaces and TUN need it)".into());
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (scripts/test.sh installs it)"
            ));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist".into());
    }
    // Creating and deleting a namespace proves `ip netns` works here
    // (a container without CAP_SYS_ADMIN fails at this step).
    let probe = format!("an-probe-{}-{}", std::process::id(), lab::next_serial());
    let mut add = Command::new("ip");
    add.args(["netns", "add", &probe]);
    match run(add, Duration::from_secs(10)) {
        Ok(out) if out.ok() => {
            let mut del = Command::new("ip");
            del.args(["netns", "del", &probe]);
            let _ = run(del, Duration::from_secs(10));
            None
        }
        Ok(out) => Some(format!("`ip netns add` fails: {}", out.stderr.trim())),
        Err(e) => Some(format!("`ip netns add` fails: {e}")),
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The full path of a program on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Writes one line to the process's real stderr. Unlike `eprintln!`, the
/// test harness does not capture it, so skip notices always show.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Progress line for a test's log (captured; shown when the test fails).
pub fn step(what: &str) {
    eprintln!("[{:>7.2}s] {what}", since_start().as_secs_f64());
}

fn since_start() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    wait_for(what, timeout, || cond().then_some(()))
}

/// Polls `probe` until it yields a value or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// Whether it exited with status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` on success, else an error quoting the command and its output.
    pub fn check(self) -> Result<Self, String> {
        if self.ok() {
            Ok(self)
        } else {
            Err(self.describe())
        }
    }

    /// A multi-line description: command, status, output.
    pub fn describe(&self) -> String {
        let mut s = format!("`{}` exited with {}", self.cmdline, self.status);
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                let _ = write!(s, "\n--- {name} ---\n{}", tail(text, 40));
            }
        }
        s
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to completion with no stdin, killing it after `timeout`.
///
/// Output goes to anonymous temporary files, not pipes: a daemon that forks
/// and keeps the inherited descriptors (as `agentnet up` may) would otherwise
/// keep a pipe open and block the reader forever.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let cmdline = describe_command(&cmd);
    let out = tempfile::tempfile().map_err(|e| format!("tempfile: {e}"))?;
    let err = tempfile::tempfile().map_err(|e| format!("tempfile: {e}"))?;
    let stdio = |f: &File| f.try_clone().map(Stdio::from);
    cmd.stdin(Stdio::null())
        .stdout(stdio(&out).map_err(|e| e.to_string())?)
        .stderr(stdio(&err).map_err(|e| e.to_string())?);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{cmdline}`: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{cmdline}` did not finish within {timeout:?}; stderr so far:\n{}",
                    tail(&read_all(err), 20)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for `{cmdline}`: {e}")),
        }
    };
    Ok(Output {
        cmdline,
        status,
        stdout: read_all(out),
        stderr: read_all(err),
    })
}

fn read_all(mut f: File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `program arg arg ...`, for messages.
pub fn describe_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `count` bytes from the kernel's CSPRNG.
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut buf = vec![0u8; count];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// PIDs of all processes whose command line mentions `needle` (e.g. a test's
/// unique state directory), other than this test process.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the parenthesised command name
/// (which may hold spaces), from field 3 (the state) on.
fn stat_fields(pid: u32) -> Result<Vec<String>, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| format!("/proc/{pid}/stat has no command name: {stat}"))?;
    Ok(rest.split_whitespace().map(String::from).collect())
}

/// Whether a process exists and has not exited (zombies count as gone).
/// Every thread counts: a killed daemon's main thread turns zombie before
/// its other threads have exited, and the process holds its descriptors
/// (its instance lock, its sockets) until the last one has.
pub fn pid_alive(pid: u32) -> bool {
    let running = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| running(&stat))
    })
}

/// A process's user + system CPU time so far (`/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); `fields`
    // starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum::<Option<u64>>()
        .ok_or_else(|| format!("/proc/{pid}/stat has no utime/stime: {fields:?}"))?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .ok_or("sysconf(CLK_TCK) failed")?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The short command name of a process (`/proc/PID/comm`).
pub fn pid_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Sends `signal` to one process by PID.
pub fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
    }
}

/// SIGTERM, up to `grace` for it to exit, then SIGKILL. Only for PIDs this
/// test started (or that live in its own namespaces).
pub fn terminate_pid(pid: u32, grace: Duration) {
    use nix::sys::signal::Signal;
    if !pid_alive(pid) {
        return;
    }
    signal_pid(pid, Signal::SIGTERM);
    if wait_until("exit", grace, || !pid_alive(pid)).is_err() {
        signal_pid(pid, Signal::SIGKILL);
        let _ = wait_until("exit after SIGKILL", Duration::from_secs(2), || {
            !pid_alive(pid)
        });
    }
}
