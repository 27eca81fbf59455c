//! `agentnet advertise` (tell trusted peers which services this agent
//! offers) and `agentnet services` (what trusted peers offer this agent).
//! With the daemon running an advertisement changes at once; without it,
//! `STATE_DIR/advertised.json` is edited for the next `up`.

use anyhow::{Result, bail};
use clap::{ArgGroup, Args};

use super::Instance;
use super::render::{human_duration, table};
use agentnet::control::services::PeerService;
use agentnet::control::{Request, Response};
use agentnet::core::services::{MAX_SERVICES, Service, parse_kind_port};
use agentnet::serve::ServedStore;
use agentnet::state::advertised::{AdvertisedStatus, AdvertisedStore, ServiceSource};

/// Long help of `advertise`.
pub(crate) const ADVERTISE_LONG_ABOUT: &str = "Tell trusted peers which services this agent offers.\n\n\
    KIND is mcp, a2a, http, grpc or any 1-15 of a-z, 0-9 and -; PORT the TCP port the service \
    listens on at this agent's overlay addresses (a server bound to the overlay address or to \
    all addresses, or a port `agentnet serve` publishes). Every `agentnet serve` port is \
    advertised too (as http with path /, or tcp), unless an advertisement names its port.\n\n\
    Each trusted peer is told only the services its policy here lets it open (`trust add \
    --allow`), inside its encrypted session: when the session comes up, and within a second \
    of a change. Untrusted agents learn nothing. At most 32 services (1200 bytes) are \
    advertised. Kept in STATE_DIR/advertised.json.\n\n\
    Examples:\n  \
    agentnet advertise mcp:8000 --path /mcp --name notes\n  \
    agentnet advertise a2a:9999 --path /.well-known/agent.json\n  \
    agentnet advertise --list\n  \
    agentnet advertise --off mcp:8000";

/// Arguments of `advertise`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").args(["service", "list", "off"]).required(true)))]
pub(crate) struct AdvertiseArgs {
    /// The service: KIND:PORT, e.g. mcp:8000.
    #[arg(value_name = "KIND:PORT")]
    pub(crate) service: Option<String>,
    /// The path it answers under, e.g. /mcp (starts with /, printable, at most 128 characters).
    #[arg(long, value_name = "P", requires = "service", conflicts_with_all = ["list", "off"])]
    pub(crate) path: Option<String>,
    /// A name for it, e.g. notes (printable, at most 48 characters).
    #[arg(long, value_name = "N", requires = "service", conflicts_with_all = ["list", "off"])]
    pub(crate) name: Option<String>,
    /// List what is advertised (declared services and served ports).
    #[arg(long)]
    pub(crate) list: bool,
    /// With --list: print a JSON array.
    #[arg(long, requires = "list")]
    pub(crate) json: bool,
    /// Stop advertising KIND:PORT.
    #[arg(long, value_name = "KIND:PORT")]
    pub(crate) off: Option<String>,
}

/// `agentnet advertise`.
pub(crate) fn advertise(context: &Instance, args: AdvertiseArgs) -> Result<()> {
    if args.list {
        return list(context, args.json);
    }
    if let Some(key) = args.off {
        return off(context, &key);
    }
    let Some(key) = args.service else {
        bail!("give KIND:PORT to advertise, --list or --off KIND:PORT");
    };
    let service = Service::parse(&key, args.path, args.name)?;
    let status = match context.daemon()? {
        Some(mut client) => match client.request(&Request::AdvertiseAdd(service))? {
            Response::Advertised(status) => status,
            other => bail!("unexpected answer to `advertise`: {other:?}"),
        },
        None => {
            AdvertisedStore::edit(&context.state, |store| {
                match store.position(&service.kind, service.port) {
                    Some(index) => store.advertised[index] = service.clone(),
                    None if store.advertised.len() >= MAX_SERVICES => bail!(
                        "{MAX_SERVICES} services are advertised already; withdraw one with \
                         `agentnet advertise --off KIND:PORT`"
                    ),
                    None => store.advertised.push(service.clone()),
                }
                Ok(())
            })?;
            say!(
                "saved: {}; agentnet is not running; peers hear of it after the next `agentnet up`",
                describe(&service)
            );
            return Ok(());
        }
    };
    if status.advertised {
        say!(
            "advertising {} to trusted peers whose policy here opens tcp:{}",
            describe(&status.service),
            status.service.port
        );
    } else {
        say!(
            "saved {}, but it does not fit the advertisement ({MAX_SERVICES} services, 1200 bytes): peers do not see it",
            describe(&status.service)
        );
    }
    Ok(())
}

fn describe(service: &Service) -> String {
    let mut text = service.key();
    if let Some(path) = &service.path {
        text.push_str(&format!(" path {path}"));
    }
    if let Some(name) = &service.name {
        text.push_str(&format!(" name {name:?}"));
    }
    text
}

fn list(context: &Instance, json: bool) -> Result<()> {
    let (set, running) = match context.daemon()? {
        Some(mut client) => match client.request(&Request::AdvertiseList)? {
            Response::AdvertiseList { services } => (services, true),
            other => bail!("unexpected answer to `advertise --list`: {other:?}"),
        },
        None => {
            let declared = AdvertisedStore::load(&context.state)?;
            let served = ServedStore::load(&context.state)?;
            (declared.with_served(&served), false)
        }
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&set)?);
        return Ok(());
    }
    if set.is_empty() {
        say!("nothing is advertised; declare a service with `agentnet advertise KIND:PORT`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = set
        .iter()
        .map(|status: &AdvertisedStatus| {
            let service = &status.service;
            vec![
                service.kind.to_string(),
                service.port.to_string(),
                service.path.clone().unwrap_or_else(|| "-".into()),
                service.name.clone().unwrap_or_else(|| "-".into()),
                match status.source {
                    ServiceSource::Advertise => "advertise".into(),
                    ServiceSource::Serve => "serve".into(),
                },
                match (status.advertised, running) {
                    (false, _) => "no (over the bound)".into(),
                    (true, true) => "yes".into(),
                    (true, false) => "at the next `up`".into(),
                },
            ]
        })
        .collect();
    say!(
        "{}",
        table(
            &["KIND", "PORT", "PATH", "NAME", "FROM", "ADVERTISED"],
            &rows
        )
        .trim_end()
    );
    Ok(())
}

fn off(context: &Instance, key: &str) -> Result<()> {
    let (kind, port) = parse_kind_port(key)?;
    let running = match context.daemon()? {
        Some(mut client) => match client.request(&Request::AdvertiseOff {
            kind: kind.clone(),
            port,
        })? {
            Response::AdvertiseOff(_) => true,
            other => bail!("unexpected answer to `advertise --off`: {other:?}"),
        },
        None => {
            AdvertisedStore::edit(&context.state, |store| {
                let Some(index) = store.position(&kind, port) else {
                    bail!("{kind}:{port} is not advertised (see `agentnet advertise --list`)");
                };
                store.advertised.remove(index);
                Ok(())
            })?;
            false
        }
    };
    say!(
        "no longer advertising {kind}:{port}{}",
        if running {
            ""
        } else {
            "; agentnet is not running"
        }
    );
    Ok(())
}

/// `agentnet services`.
pub(crate) fn services(context: &Instance, json: bool) -> Result<()> {
    let mut client = context.require_daemon()?;
    let services: Vec<PeerService> = match client.request(&Request::Services)? {
        Response::Services { services } => services,
        other => bail!("unexpected answer to `services`: {other:?}"),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    if services.is_empty() {
        say!("no trusted peer advertises a service to this agent");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|service| {
            let addresses = match service.address4 {
                Some(v4) => format!("{} {v4}", service.address),
                None => service.address.to_string(),
            };
            vec![
                service.peer.clone(),
                service.from_peer.kind.clone(),
                service.url.clone(),
                service.from_peer.name.clone().unwrap_or_else(|| "-".into()),
                addresses,
                format!("{} ago", human_duration(service.last_seen_age_s)),
            ]
        })
        .collect();
    say!(
        "{}",
        table(
            &[
                "PEER",
                "KIND",
                "URL",
                "NAME (from peer)",
                "ADDRESSES",
                "LAST SEEN"
            ],
            &rows
        )
        .trim_end()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    #[test]
    fn advertise_takes_kind_port_path_and_name_and_refuses_mixed_actions() {
        let cli = Cli::try_parse_from([
            "agentnet",
            "advertise",
            "mcp:8000",
            "--path",
            "/mcp",
            "--name",
            "notes",
        ])
        .expect("parses");
        let Command::Advertise(args) = cli.command else {
            panic!("not advertise");
        };
        assert_eq!(args.service.as_deref(), Some("mcp:8000"));
        assert_eq!(args.path.as_deref(), Some("/mcp"));
        for bad in [
            &["agentnet", "advertise"][..],
            &["agentnet", "advertise", "--list", "mcp:1"],
            &["agentnet", "advertise", "--off", "mcp:1", "--path", "/x"],
            &["agentnet", "advertise", "--json"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
        let cli = Cli::try_parse_from(["agentnet", "services", "--json"]).expect("parses");
        assert!(matches!(cli.command, Command::Services { json: true }));
    }
}
