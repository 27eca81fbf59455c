//! `agentnet mcp`: the network as tools for an AI agent, an MCP server on
//! stdio built on the official Rust SDK (`rmcp`).
//!
//! The server holds no state of its own: every tool is one request on the
//! daemon's control socket ([`crate::control`]), so it sees what
//! `agentnet status`, `trust`, `services` and `ping` see, with the socket's
//! permissions (a user who cannot open the socket gets that error back).
//!
//! Tools ([`tools`]): `whoami`, `peers`, `ping`, `services`,
//! `request_trust` and `pending` always; `approve`, `deny`, `revoke` and
//! `advertise` only when the operator started the server with
//! `--allow-admin`. Without it those are neither listed nor run: a call
//! gets a tool error that says why ([`tools::ADMIN_TOOLS`]).
//!
//! Text another agent wrote (a claimed name, a justification, what a
//! service or an Agent Card says) is returned inside `from_peer` objects,
//! escaped and capped ([`from_peer`]), and every such answer carries a
//! note saying it is data, not instructions.

#![forbid(unsafe_code)]

mod daemon;
pub mod from_peer;
pub mod tools;

use std::path::PathBuf;

use rmcp::ServiceExt;

pub use self::tools::AgentnetTools;

/// How the server was started.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Whether the admin tools (approve, deny, revoke, advertise) run.
    pub allow_admin: bool,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The MCP session could not start (bad initialisation from the host).
    #[error("the MCP session did not start: {0}")]
    Start(String),
    /// The session's task failed.
    #[error("the MCP session failed: {0}")]
    Session(String),
}

/// Serves the tools on stdin/stdout until the host closes the stream.
pub async fn serve_stdio(options: McpOptions) -> Result<(), McpError> {
    tracing::info!(
        socket = %options.socket.display(),
        allow_admin = options.allow_admin,
        "mcp: serving on stdio"
    );
    let running = AgentnetTools::new(options)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| McpError::Start(error.to_string()))?;
    let reason = running
        .waiting()
        .await
        .map_err(|error| McpError::Session(error.to_string()))?;
    tracing::info!(?reason, "mcp: session closed");
    Ok(())
}
