//! The command line: one file per command group (`init`/`id`, `up`/`down`,
//! `status`, `ping`, `trust`, `fleet`, `attach`/`detach`, `serve`,
//! `advertise`/`services`, `mcp`,
//! `rendezvous`/`netcheck`), each with its clap arguments; the top-level
//! definitions in [`args`]; here only the dispatch and the logging set-up.
//!
//! Commands that need the daemon talk to it over the control socket
//! ([`agentnet::control`]); `init` and `id` work on the state directory
//! alone, and the `trust` commands edit the store file directly when no
//! daemon runs.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;

/// Prints a line on stdout. A closed stdout (`agentnet status | head -1`)
/// is not an error worth a panic: the reader has what it wanted. Any other
/// failure (a full disk under `agentnet fleet endorse … > token`) is kept,
/// and the command fails with it once it has run ([`output::failure`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::cli::output::note(writeln!(std::io::stdout().lock(), $($arg)*));
    }};
}

pub(crate) mod output {
    //! What became of the lines `say!` wrote.

    use std::io::ErrorKind;
    use std::sync::Mutex;

    /// The first write to stdout that failed other than on a closed pipe.
    static FAILED: Mutex<Option<std::io::Error>> = Mutex::new(None);

    /// Keeps the first failure of a write to stdout (a closed pipe is
    /// none: the reader stopped reading).
    pub(crate) fn note(written: std::io::Result<()>) {
        if let Err(error) = written
            && error.kind() != ErrorKind::BrokenPipe
            && let Ok(mut failed) = FAILED.lock()
        {
            failed.get_or_insert(error);
        }
    }

    /// The error a command ends with when its output was not written.
    pub(crate) fn failure() -> Option<anyhow::Error> {
        let failed = FAILED.lock().ok()?.take()?;
        Some(anyhow::Error::new(failed).context("cannot write the output to stdout"))
    }
}

// After `say!`, which they use.
mod args;
mod attach;
mod fleet;
mod init;
mod instance;
mod mcp;
mod ping;
mod render;
mod rendezvous;
mod serve;
mod services;
mod status;
mod trust;
mod up;
mod userspace;

pub(crate) use self::args::{Cli, Command};
use self::instance::Instance;

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let context = Instance::new(&cli)?;
    match cli.command {
        Command::Init(args) => init::init(&context, args),
        Command::Id { json } => init::id(&context, json),
        Command::Up(args) => up::up(&context, cli.log_format, args),
        Command::Down => up::down(&context),
        Command::Status { json, watch } => status::status(&context, json, watch),
        Command::Ping(args) => ping::ping(&context, args),
        Command::Trust(command) => trust::run(&context, command),
        Command::Fleet(command) => fleet::fleet(command),
        Command::Attach(args) => attach::attach(&context, args),
        Command::Detach(args) => attach::detach(&context, args),
        Command::Serve(args) => serve::serve(&context, args),
        Command::Advertise(args) => services::advertise(&context, args),
        Command::Services { json, cards } => services::services(&context, json, cards),
        Command::Mcp(args) => mcp::mcp(&context, args),
        Command::Rendezvous(args) => rendezvous::rendezvous(&context, args),
        Command::Netcheck(args) => rendezvous::netcheck(&context, args),
    }?;
    if let Some(error) = output::failure() {
        return Err(error);
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the tracing subscriber: `info` for the daemon, `warn` for the
/// other commands, unless AGENTNET_LOG or RUST_LOG say otherwise.
pub(crate) fn init_logging(cli: &Cli) {
    let is_daemon = matches!(&cli.command, Command::Up(args) if args.foreground)
        || matches!(&cli.command, Command::Rendezvous(args) if args.foreground);
    let default = if is_daemon { "info" } else { "warn" };
    let filter = std::env::var("AGENTNET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A log line that cannot be written is lost, and nothing else happens:
    // by default the subscriber reports it with `eprintln!`, which panics
    // when stderr is a pipe nobody reads any more (a foreground daemon
    // piped into `head`), and the daemon would die with it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The value of `--log-format` that selects this format.
    pub(crate) fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}
