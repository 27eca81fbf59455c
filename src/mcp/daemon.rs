//! One control-socket request from the async MCP server: the control
//! client is blocking, so each request runs on tokio's blocking pool.

use std::path::PathBuf;

use crate::control::{ControlClient, ControlError, Request, Response};

/// Sends `request` to the daemon at `socket` and returns its answer, or a
/// message for the agent that says what went wrong and what to do.
pub(super) async fn call(socket: PathBuf, request: Request) -> Result<Response, String> {
    let answer = tokio::task::spawn_blocking(move || {
        ControlClient::call(&socket, &request).map_err(describe)
    })
    .await;
    match answer {
        Ok(answer) => answer,
        Err(error) => Err(format!("the request to the daemon did not finish: {error}")),
    }
}

/// A control error as the agent should read it.
fn describe(error: ControlError) -> String {
    match error {
        ControlError::NotRunning { socket } => format!(
            "the agentnet daemon is not running (no socket at {}); an operator starts it \
             with `sudo agentnet up`",
            socket.display()
        ),
        ControlError::PermissionDenied { socket } => format!(
            "this user may not use the daemon's control socket {} (it belongs to the \
             daemon's owner and group)",
            socket.display()
        ),
        other => other.to_string(),
    }
}
