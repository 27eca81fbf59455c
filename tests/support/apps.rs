//! The real applications of the namespace tests (`tests/apps/`): where
//! their scripts are, and the Python that can run them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::agent::agentnet_bin;
use super::{Agent, Lab, run};

/// The Python interpreter with `modules`: the repo's `.venv` (where
/// `scripts/test.sh` installs `scripts/requirements-test.txt`) or
/// `python3` on `PATH`.
pub fn python_with(modules: &[&str]) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let python = if venv.is_file() {
        venv
    } else {
        super::which("python3").ok_or("python3 is not installed")?
    };
    let import = format!("import {}", modules.join(", "));
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", &import]);
    let out = run(cmd, Duration::from_secs(60))?;
    if out.ok() {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import {modules:?} (scripts/test.sh installs scripts/requirements-test.txt into .venv): {}",
            python.display(),
            out.stderr.trim()
        ))
    }
}

/// A namespace test's [`Requirement`](super::Requirement): a Python with
/// these modules (found: the interpreter's path, see [`python_with`]).
pub struct Python(pub &'static [&'static str]);

impl super::Requirement for Python {
    type Found = PathBuf;
    fn check(&self) -> Result<PathBuf, String> {
        python_with(self.0)
    }
}

/// The directory of the apps' scripts.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A path as the `&str` an argument list needs.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// One session of an MCP host with `agentnet mcp SERVER_ARGS` of `agent`:
/// the official Python SDK's stdio client (`tests/apps/agentnet_mcp_client.py`,
/// run with `python` inside the agent's namespace) spawns the server, lists
/// its tools and makes `calls` (`[["tool", {arguments}], ...]`) in order.
/// Returns the client's report: `server`, `tools`, `schemas` and per call
/// `tool`, `is_error`, `structured` and `text`.
#[allow(dead_code)] // Each test binary compiles support/ and uses part of it.
pub fn agentnet_mcp_session(
    lab: &Lab,
    python: &Path,
    agent: &Agent,
    server_args: &[&str],
    calls: &Value,
) -> Result<Value, String> {
    let script = apps_dir().join("agentnet_mcp_client.py");
    let bin = agentnet_bin();
    let state = agent.state_dir().to_string_lossy().into_owned();
    let calls = calls.to_string();
    let mut args = vec![
        path_str(python),
        path_str(&script),
        &calls,
        path_str(&bin),
        "--state-dir",
        &state,
        "mcp",
    ];
    args.extend_from_slice(server_args);
    let out = lab.exec_ok(&agent.host.ns, &args)?;
    serde_json::from_str(out.stdout.trim()).map_err(|e| {
        format!(
            "the MCP client's report is not JSON ({e}):\n{}",
            out.describe()
        )
    })
}

/// The structured result of the call of `tool` in an [`agentnet_mcp_session`]
/// report, checked to be no error.
#[allow(dead_code)]
pub fn mcp_success<'r>(report: &'r Value, tool: &str) -> Result<&'r Value, String> {
    let result = report["results"]
        .as_array()
        .and_then(|results| results.iter().find(|result| result["tool"] == tool))
        .ok_or_else(|| format!("no result of {tool} in {report}"))?;
    if result["is_error"] != false {
        return Err(format!("{tool} failed: {}", result["text"]));
    }
    Ok(&result["structured"])
}
