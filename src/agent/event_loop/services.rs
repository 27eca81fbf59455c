//! The daemon's side of services: `agentnet serve` (published ports),
//! `agentnet advertise` (the set trusted peers are told about: declared
//! services, then served ports) and `agentnet services` (what trusted
//! peers advertised here); and the last services generation the node
//! issued, kept in the state directory across restarts.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::Daemon;
use crate::control::services::{AdvertisedByPeer, PeerService, service_url};
use crate::control::{Request, Response, TrustedPeer};
use crate::core::services::MAX_SERVICES;
use crate::core::trust::store::TrustState;
use crate::serve::ServedStore;
use crate::state::StateDir;
use crate::state::StateError;
use crate::state::advertised::{AdvertisedStatus, AdvertisedStore, sent};
use crate::state::services_generation::ServicesGeneration;

/// Why an `advertise` edit is refused.
#[derive(Debug, thiserror::Error)]
enum AdvertiseError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "{MAX_SERVICES} services are advertised already; withdraw one with `agentnet advertise --off KIND:PORT`"
    )]
    TooMany,
    #[error("{0} is not advertised (see `agentnet advertise --list`)")]
    NotAdvertised(String),
}

/// The last services generation issued before this start, for the node
/// (0 when there is none, or when the file is unreadable: the module docs
/// of `state::services_generation` say why that is safe).
pub(super) fn kept_services_generation(state: &StateDir) -> u64 {
    match ServicesGeneration::load(state) {
        Ok(kept) => kept.last_issued,
        Err(error) => {
            tracing::warn!(
                %error,
                "cannot read the last services generation; starting from the wall clock"
            );
            0
        }
    }
}

impl Daemon {
    /// Writes the node's last services generation to the state directory
    /// when it changed since the last write: one comparison per wake, a
    /// write only when the node issued a new generation (a failed write
    /// is logged and not retried until the next one).
    pub(super) fn save_services_generation_if_changed(&mut self) {
        let last_issued = self.node.last_services_generation();
        if last_issued == self.saved_services_generation {
            return;
        }
        self.saved_services_generation = last_issued;
        if let Err(error) = (ServicesGeneration { last_issued }).save(&self.options.state) {
            tracing::warn!(
                %error,
                "cannot save the services generation: after a restart with the clock set \
                 back, peers would keep this agent's old services until the clock passes it"
            );
        }
    }

    /// `agentnet serve`: publish, list or withdraw a port (a change is
    /// advertised to peers too).
    pub(super) fn serve(&mut self, request: Request) -> Response {
        let Some(services) = self.services.as_mut() else {
            return Response::Error("`agentnet serve` is not available in this daemon".to_string());
        };
        let answer = match request {
            Request::ServeAdd(spec) => services.add(spec).map(Response::Serving),
            Request::ServeList {} => {
                return Response::ServeList {
                    services: services.list(),
                };
            }
            Request::ServeOff { port } => services.remove(port).map(Response::ServeOff),
            other => return Response::Error(format!("not a serve request: {other:?}")),
        };
        if answer.is_ok() {
            self.refresh_advertised(Instant::now());
        }
        answer.unwrap_or_else(|error| Response::Error(error.to_string()))
    }

    /// `agentnet advertise`: add (or update), list or withdraw a service.
    pub(super) fn advertise(&mut self, request: Request) -> Response {
        let state = &self.options.state;
        let answer = match request {
            Request::AdvertiseAdd(service) => {
                let key = service.key();
                AdvertisedStore::edit(state, |store| {
                    match store.position(&service.kind, service.port) {
                        Some(index) => store.advertised[index] = service,
                        None if store.advertised.len() >= MAX_SERVICES => {
                            return Err(AdvertiseError::TooMany);
                        }
                        None => store.advertised.push(service),
                    }
                    Ok(())
                })
                .map(|()| {
                    let set = self.refresh_advertised(Instant::now());
                    let status = set.into_iter().find(|status| status.service.key() == key);
                    status.map_or_else(
                        || Response::Error(format!("{key} was saved but is not in the set")),
                        Response::Advertised,
                    )
                })
            }
            Request::AdvertiseList {} => Ok(Response::AdvertiseList {
                services: self.refresh_advertised(Instant::now()),
            }),
            Request::AdvertiseOff { kind, port } => AdvertisedStore::edit(state, |store| {
                let index = store
                    .position(&kind, port)
                    .ok_or_else(|| AdvertiseError::NotAdvertised(format!("{kind}:{port}")))?;
                Ok(store.advertised.remove(index))
            })
            .map(|removed| {
                self.refresh_advertised(Instant::now());
                Response::AdvertiseOff(removed)
            }),
            other => return Response::Error(format!("not an advertise request: {other:?}")),
        };
        answer.unwrap_or_else(|error| Response::Error(error.to_string()))
    }

    /// Reads `advertised.json` and `served.json` and hands the node the set
    /// that fits one advertisement (peers that see a change hear of it at
    /// once). Returns the whole set, each entry marked sent or not.
    pub(super) fn refresh_advertised(&mut self, now: Instant) -> Vec<AdvertisedStatus> {
        let state = &self.options.state;
        let (declared, served) = match (AdvertisedStore::load(state), ServedStore::load(state)) {
            (Ok(declared), Ok(served)) => (declared, served),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot read the advertised services; keeping the ones sent");
                return Vec::new();
            }
        };
        let set = declared.with_served(&served);
        for left_out in set.iter().filter(|status| !status.advertised) {
            tracing::warn!(
                service = %left_out.service.key(),
                "not advertised: the advertisement holds at most {MAX_SERVICES} services in 1200 bytes"
            );
        }
        if let Err(error) = self.node.set_advertised_services(now, sent(&set)) {
            tracing::error!(%error, "cannot advertise the services");
        }
        set
    }

    /// `agentnet services`: what each trusted peer advertised here.
    pub(super) fn peer_services(&self, now: Instant) -> Response {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let mut services = Vec::new();
        for learned in self.node.peer_services(now) {
            let Some(entry) = self.trust.get(&learned.id) else {
                continue;
            };
            if entry.state != TrustState::Trusted {
                continue;
            }
            let peer = self.trusted_peer(entry.clone());
            let TrustedPeer {
                address, address4, ..
            } = peer;
            let age = now
                .saturating_duration_since(learned.last_seen)
                .as_secs_f64();
            for service in &learned.learned.services {
                services.push(PeerService {
                    peer: entry.name.clone(),
                    peer_id: entry.id,
                    address,
                    address4,
                    url: service_url(&entry.name, service),
                    from_peer: AdvertisedByPeer::new(service),
                    last_seen_unix: (unix_now - age).max(0.0) as u64,
                    last_seen_age_s: age,
                    session_up: learned.session_up,
                });
            }
        }
        Response::Services { services }
    }
}
