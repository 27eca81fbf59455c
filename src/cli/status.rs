//! `agentnet status`: the daemon's state, once or every few seconds.

use std::io::IsTerminal;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Instance;
use super::render::{StatusView, render_status};
use agentnet::control::{ControlClient, Request, Response};

/// `agentnet status`.
pub(super) fn status(context: &Instance, json: bool, watch: Option<f64>) -> Result<()> {
    let mut client = context.require_daemon()?;
    let Some(every) = watch else {
        return show_status(&mut client, json);
    };
    if !(0.1..=3600.0).contains(&every) {
        bail!("--watch takes 0.1 to 3600 seconds");
    }
    let terminal = std::io::stdout().is_terminal();
    // Until interrupted (Ctrl-C ends the process).
    loop {
        if terminal {
            // Home and clear, as watch(1) does.
            say!("\x1b[H\x1b[2J");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if !json {
            say!("every {every}s (unix time {now}); Ctrl-C to stop\n");
        }
        show_status(&mut client, json)?;
        if !terminal {
            say!("");
        }
        thread::sleep(Duration::from_secs_f64(every));
    }
}

fn show_status(client: &mut ControlClient, json: bool) -> Result<()> {
    let value = match client.request(&Request::Status {})? {
        Response::Status(value) => value,
        other => bail!("unexpected answer to `status`: {other:?}"),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let view: StatusView =
            serde_json::from_value(value).context("the daemon's status has an unexpected shape")?;
        say!("{}", render_status(&view).trim_end());
    }
    Ok(())
}
