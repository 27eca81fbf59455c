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
///
/// Messages are JSON-RPC, one per line. A line that is not JSON at all is
/// skipped without an answer: it carries no ID to answer to, and a reply
/// to garbage can start an error storm with a host that echoes it (what
/// the official MCP SDKs do too). A line of JSON that is no JSON-RPC
/// message gets `-32600 Invalid request`; either way the session goes on.
pub async fn serve_stdio(options: McpOptions) -> Result<(), McpError> {
    tracing::info!(
        socket = %options.socket.display(),
        allow_admin = options.allow_admin,
        "mcp: serving on stdio"
    );
    let (input, output) = rmcp::transport::stdio();
    serve(options, input, output).await
}

/// Serves the tools on one byte stream each way until the input closes.
async fn serve<R, W>(options: McpOptions, input: R, output: W) -> Result<(), McpError>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let running = AgentnetTools::new(options)
        .serve((input, output))
        .await
        .map_err(|error| McpError::Start(error.to_string()))?;
    let reason = running
        .waiting()
        .await
        .map_err(|error| McpError::Session(error.to_string()))?;
    tracing::info!(?reason, "mcp: session closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    /// The host's lines: garbage, JSON that is no JSON-RPC message, a cut
    /// message, then a session (initialize, initialized, tools/list).
    const HOST_LINES: &str = concat!(
        "not json\n",
        "{\"foo\":1}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/li\n",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":",
        "{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},",
        "\"clientInfo\":{\"name\":\"test\",\"version\":\"1\"}}}\n",
        "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n",
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n",
    );

    #[tokio::test]
    async fn malformed_lines_get_an_invalid_request_or_silence_and_the_session_goes_on() {
        let (host_out, server_in) = tokio::io::duplex(64 * 1024);
        let (server_out, host_in) = tokio::io::duplex(64 * 1024);
        let options = McpOptions {
            socket: "/nonexistent/agentnet.sock".into(),
            allow_admin: false,
        };
        let server = tokio::spawn(serve(options, server_in, server_out));
        let (mut host_out, mut replies) = (host_out, BufReader::new(host_in).lines());
        host_out
            .write_all(HOST_LINES.as_bytes())
            .await
            .expect("written");
        let mut next = async || -> Value {
            let line = replies.next_line().await.expect("read").expect("a reply");
            serde_json::from_str(&line).expect("each reply is JSON")
        };

        assert_eq!(
            next().await,
            json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid request"}}),
            "JSON that is no JSON-RPC message is refused; the garbage line before it got nothing"
        );
        let initialized = next().await;
        assert_eq!(
            initialized["id"], 1,
            "the cut line got no answer: {initialized}"
        );
        assert_eq!(initialized["result"]["serverInfo"]["name"], "agentnet");
        let listed = next().await;
        assert_eq!(listed["id"], 2, "{listed}");
        let tools = listed["result"]["tools"].as_array().expect("a tool list");
        assert_eq!(tools.len(), 6, "the read-only tools: {listed}");

        drop(host_out);
        server
            .await
            .expect("joined")
            .expect("the session ends cleanly");
    }
}
