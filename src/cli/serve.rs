//! `agentnet serve`: publish a local service to trusted peers. With the
//! daemon running the change applies at once; without it,
//! `STATE_DIR/served.json` is edited for the next `up`.

use anyhow::{Result, bail};
use clap::{ArgGroup, Args};

use super::Instance;
use super::render::table;
use agentnet::control::{Request, Response};
use agentnet::serve::{ServeError, ServeMode, ServeSpec, ServeStatus, ServedStore};

/// Long help of `serve`.
pub(crate) const SERVE_LONG_ABOUT: &str = "Publish a local service to trusted peers.\n\n\
    The daemon listens on this agent's overlay addresses (IPv6, and IPv4 unless it is off), \
    port PORT, and passes each connection from a trusted peer to TARGET (default \
    127.0.0.1:PORT), so a server bound to loopback on its defaults is reachable as \
    http://NAME.agent.internal:PORT/ by the peers that trust this agent under NAME, within \
    this agent's policy for each of them (`trust add --allow`). A connection from an address \
    no trusted peer holds is closed.\n\n\
    --http (the default) is a reverse proxy for HTTP/1.1 (streaming bodies, server-sent \
    events) and h2c: it sets Host to TARGET (as nginx's proxy_pass does), adds \
    X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto and Forwarded with the caller's \
    overlay address, and Agentnet-Peer-Id and Agentnet-Peer-Name: the caller's agent ID and \
    its name in this agent's trust store. Any such header the client sent is removed first, \
    so the service can trust them. If TARGET does not answer, the peer gets 502.\n\n\
    --tcp splices bytes both ways (half-close passed on); if TARGET does not accept, the \
    peer's connection is reset. In both cases the daemon's log says why.\n\n\
    What is served is kept in STATE_DIR/served.json across restarts. Ports below 1024 are \
    bound at start-up only (before the daemon drops its privileges). With `up --userspace` \
    the served ports are read at start (the stack hands their connections to the proxy), \
    so change them while agentnet is down.\n\n\
    Examples:\n  \
    agentnet serve 8000                    # 127.0.0.1:8000, to peers on port 8000\n  \
    agentnet serve --tcp 5432 [::1]:5432\n  \
    agentnet serve --list\n  \
    agentnet serve --off 8000";

/// Arguments of `serve`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").args(["port", "list", "off"]).required(true)))]
pub(crate) struct ServeArgs {
    /// Reverse-proxy HTTP/1.1 and h2c, adding the caller's identity headers (the default).
    #[arg(long, conflicts_with_all = ["tcp", "list", "off"])]
    pub(crate) http: bool,
    /// Splice TCP bytes both ways instead.
    #[arg(long, conflicts_with_all = ["list", "off"])]
    pub(crate) tcp: bool,
    /// List the served ports.
    #[arg(long)]
    pub(crate) list: bool,
    /// With --list: print a JSON array (port, mode, target, listening, problem).
    #[arg(long, requires = "list")]
    pub(crate) json: bool,
    /// Stop serving PORT (open connections end).
    #[arg(long, value_name = "PORT")]
    pub(crate) off: Option<u16>,
    /// The port peers connect to, on this agent's overlay addresses.
    #[arg(value_name = "PORT")]
    pub(crate) port: Option<u16>,
    /// Where connections go: IPV4:PORT or [IPV6]:PORT [default: 127.0.0.1:PORT].
    #[arg(value_name = "TARGET", requires = "port")]
    pub(crate) target: Option<String>,
}

/// `agentnet serve`.
pub(crate) fn serve(context: &Instance, args: ServeArgs) -> Result<()> {
    if args.list {
        return list(context, args.json);
    }
    if let Some(port) = args.off {
        return off(context, port);
    }
    let Some(port) = args.port else {
        bail!("give a PORT to serve, --list or --off PORT");
    };
    let mode = if args.tcp {
        ServeMode::Tcp
    } else {
        ServeMode::Http
    };
    let spec = ServeSpec::new(port, mode, args.target.as_deref())?;
    match context.daemon()? {
        Some(mut client) => match client.request(&Request::ServeAdd(spec))? {
            Response::Serving(status) => {
                let on: Vec<String> = status.listening.iter().map(ToString::to_string).collect();
                say!(
                    "serving port {port} ({mode}) -> {} on {}",
                    status.spec.target,
                    on.join(" and ")
                );
                say!(
                    "trusted peers reach it by this agent's address or as NAME.agent.internal:{port} \
                     (NAME: their name for this agent), within their policy here"
                );
            }
            other => bail!("unexpected answer to `serve`: {other:?}"),
        },
        None => {
            ServedStore::edit(&context.state, |store| {
                if let Some(existing) = store.get(port) {
                    return Err(ServeError::AlreadyServed {
                        port,
                        mode: existing.mode,
                        target: existing.target,
                    });
                }
                if store.served.len() >= agentnet::serve::MAX_SERVED {
                    return Err(ServeError::TooMany);
                }
                store.served.push(spec.clone());
                Ok(())
            })?;
            say!(
                "saved: port {port} ({mode}) -> {}; agentnet is not running; this applies at the next `agentnet up`",
                spec.target
            );
        }
    }
    Ok(())
}

fn list(context: &Instance, json: bool) -> Result<()> {
    let (services, running) = match context.daemon()? {
        Some(mut client) => match client.request(&Request::ServeList {})? {
            Response::ServeList { services } => (services, true),
            other => bail!("unexpected answer to `serve --list`: {other:?}"),
        },
        None => {
            let stored = ServedStore::load(&context.state)?;
            let services = stored
                .served
                .into_iter()
                .map(|spec| ServeStatus {
                    spec,
                    listening: Vec::new(),
                    problem: None,
                })
                .collect();
            (services, false)
        }
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    if services.is_empty() {
        say!("nothing is served; publish a local service with `agentnet serve PORT`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|service| {
            let listening = match (&service.problem, running) {
                (Some(problem), _) => format!("- ({problem})"),
                (None, false) => "- (agentnet is not running)".to_string(),
                (None, true) => service
                    .listening
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            vec![
                service.spec.port.to_string(),
                service.spec.mode.to_string(),
                service.spec.target.to_string(),
                listening,
            ]
        })
        .collect();
    say!(
        "{}",
        table(&["PORT", "MODE", "TARGET", "LISTENING"], &rows).trim_end()
    );
    Ok(())
}

fn off(context: &Instance, port: u16) -> Result<()> {
    let (spec, running) = match context.daemon()? {
        Some(mut client) => match client.request(&Request::ServeOff { port })? {
            Response::ServeOff(spec) => (spec, true),
            other => bail!("unexpected answer to `serve --off`: {other:?}"),
        },
        None => {
            let spec = ServedStore::edit(&context.state, |store| {
                let Some(index) = store.served.iter().position(|spec| spec.port == port) else {
                    return Err(ServeError::NotServed(port));
                };
                Ok(store.served.remove(index))
            })?;
            (spec, false)
        }
    };
    say!(
        "no longer serving port {port} ({} -> {}){}",
        spec.mode,
        spec.target,
        if running {
            ""
        } else {
            "; agentnet is not running"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    #[test]
    fn serve_defaults_to_http_and_refuses_mixed_actions() {
        let cli = Cli::try_parse_from(["agentnet", "serve", "8000"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(args.port, Some(8000));
        assert!(!args.tcp && !args.list && args.target.is_none());
        let cli = Cli::try_parse_from(["agentnet", "serve", "--tcp", "5432", "[::1]:5432"])
            .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert!(args.tcp);
        assert_eq!(args.target.as_deref(), Some("[::1]:5432"));
        for bad in [
            &["agentnet", "serve"][..],
            &["agentnet", "serve", "--tcp", "--http", "80"],
            &["agentnet", "serve", "--list", "80"],
            &["agentnet", "serve", "--off", "80", "--tcp"],
            &["agentnet", "serve", "--json"],
            &["agentnet", "serve", "70000"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }
}
