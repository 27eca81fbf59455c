//! Fetching a card: one HTTP/1.1 `GET` per path tried, on a connection
//! of its own to the peer's overlay address, under one deadline, the body
//! read up to its cap (see the module docs of [`crate::cards`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::summary::{AgentCardSummary, CardFromPeer};
use super::{
    CardError, CardErrorReport, CardLimits, MAX_CONCURRENT_FETCHES, OLDER_WELL_KNOWN_CARD_PATH,
    ServiceWithCard, WELL_KNOWN_CARD_PATH,
};
use crate::control::services::PeerService;
use crate::core::text::{Untrusted, escape_untrusted};
use crate::names::dns::DOMAIN;

/// How long one address may take to connect before the next is tried
/// alongside it (RFC 8305's connection attempt delay).
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);
/// The kind of service whose card is fetched.
const A2A_KIND: &str = "a2a";

/// Where an advertised A2A agent is, as this agent knows it: from the
/// services list (the trust store's name, the key-derived addresses),
/// never from the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardTarget {
    /// The peer's name here: the request's `Host` is
    /// `NAME.agent.internal:PORT`.
    pub peer: String,
    /// The peer's overlay addresses, in the order tried.
    pub addresses: Vec<IpAddr>,
    /// The service's TCP port.
    pub port: u16,
    /// The path the peer advertised, if any.
    pub advertised_path: Option<String>,
}

impl CardTarget {
    /// The target of an `a2a` service of `agentnet services` (`None` for
    /// other kinds): IPv6 first, then IPv4 if the peer has it here.
    pub fn of_service(service: &PeerService) -> Option<Self> {
        if service.from_peer.kind != A2A_KIND {
            return None;
        }
        let mut addresses = vec![IpAddr::V6(service.address)];
        addresses.extend(service.address4.map(IpAddr::V4));
        Some(Self {
            peer: service.peer.clone(),
            addresses,
            port: service.from_peer.port,
            advertised_path: service.from_peer.path.clone(),
        })
    }

    /// The paths asked for, in order: the advertised one if it names a
    /// JSON file, else the current well-known path, then the older one.
    pub fn card_paths(&self) -> Vec<&str> {
        match self.advertised_path.as_deref() {
            Some(path) if path.ends_with(".json") => vec![path],
            _ => vec![WELL_KNOWN_CARD_PATH, OLDER_WELL_KNOWN_CARD_PATH],
        }
    }

    /// `NAME.agent.internal:PORT`.
    pub fn host(&self) -> String {
        format!("{}.{DOMAIN}:{}", self.peer, self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.host(), escape_untrusted(path))
    }
}

/// Fetches and sums up the card of `target`, within `limits`.
pub async fn fetch_agent_card(
    target: &CardTarget,
    limits: &CardLimits,
) -> Result<AgentCardSummary, CardError> {
    let fetched = tokio::time::timeout(limits.timeout, fetch_first_found(target, limits)).await;
    let result = fetched.unwrap_or(Err(CardError::Timeout {
        after: limits.timeout,
    }));
    if let Err(error) = &result {
        tracing::debug!(peer = %Untrusted(&target.peer), port = target.port, %error, "no agent card");
    }
    result
}

/// The services of `services` with the card of each `a2a` one, or why it
/// has none: at most [`MAX_CONCURRENT_FETCHES`] fetched at once, in the
/// order given, all within one [`CardLimits::timeout`] (a fetch still
/// waiting for its turn or running then is given up as a timeout), so a
/// peer advertising many slow cards holds no caller longer than that.
pub async fn fetch_cards(services: Vec<PeerService>, limits: CardLimits) -> Vec<ServiceWithCard> {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES));
    let mut fetches = JoinSet::new();
    let mut cards: Vec<Option<Result<AgentCardSummary, CardError>>> =
        services.iter().map(|_| None).collect();
    for (index, service) in services.iter().enumerate() {
        let Some(target) = CardTarget::of_service(service) else {
            continue;
        };
        // What an a2a service shows unless its fetch ends in time.
        cards[index] = Some(Err(CardError::Timeout {
            after: limits.timeout,
        }));
        let permits = Arc::clone(&permits);
        fetches.spawn(async move {
            // The semaphore is never closed.
            let _permit = permits.acquire_owned().await;
            (index, fetch_agent_card(&target, &limits).await)
        });
    }
    let all_fetched = async {
        while let Some(joined) = fetches.join_next().await {
            match joined {
                Ok((index, result)) => cards[index] = Some(result),
                Err(error) => tracing::warn!(%error, "an agent card fetch failed"),
            }
        }
    };
    if tokio::time::timeout(limits.timeout, all_fetched)
        .await
        .is_err()
    {
        tracing::debug!("agent cards: the deadline passed; the unfinished fetches are given up");
    }
    // Dropping the set aborts what still runs.
    drop(fetches);
    services
        .into_iter()
        .zip(cards)
        .map(|(service, card)| {
            let (card, card_error) = match card {
                Some(Ok(card)) => (Some(card), None),
                Some(Err(error)) => (None, Some(CardErrorReport::from(&error))),
                None => (None, None),
            };
            ServiceWithCard {
                service,
                card,
                card_error,
            }
        })
        .collect()
}

/// Asks each path in turn; a 404 moves on to the next.
async fn fetch_first_found(
    target: &CardTarget,
    limits: &CardLimits,
) -> Result<AgentCardSummary, CardError> {
    let paths = target.card_paths();
    let mut paths = paths.iter().peekable();
    while let Some(path) = paths.next() {
        match get(target, path, limits).await {
            Err(CardError::Status { status: 404, .. }) if paths.peek().is_some() => continue,
            Err(error) => return Err(error),
            Ok(body) => {
                return Ok(AgentCardSummary {
                    fetched_from: target.url(path),
                    from_peer: CardFromPeer::parse(&body, limits)?,
                });
            }
        }
    }
    Err(CardError::BadTarget("no path to ask".into()))
}

/// `GET path` on a fresh connection: the body of a 2xx answer, read up
/// to the cap.
async fn get(target: &CardTarget, path: &str, limits: &CardLimits) -> Result<Bytes, CardError> {
    let url = target.url(path);
    // What would not go out as it is (a fragment is cut off) is no URL.
    let path_and_query = PathAndQuery::try_from(path)
        .ok()
        .filter(|parsed| parsed.as_str() == path)
        .ok_or_else(|| CardError::BadTarget(format!("{url} is not a URL")))?;
    let host = HeaderValue::try_from(target.host())
        .map_err(|_| CardError::BadTarget(format!("{url} has no usable host name")))?;
    let request = Request::get(hyper::Uri::from(path_and_query))
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("agentnet/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|error| CardError::BadTarget(format!("{url}: {error}")))?;
    let stream = connect(&target.addresses, target.port).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        read_answer(response, url, limits.max_body_bytes).await
    };
    // The connection is driven here, not on a task of its own: dropping
    // this future (the deadline) closes it.
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        ended = &mut connection => match ended {
            // Closed after the answer: what was read is still delivered.
            Ok(()) => exchange.await,
            Err(error) => Err(CardError::Http(error)),
        },
    }
}

/// A 2xx answer's body, at most `max_bytes` of it (the rest is not read);
/// anything else is an error.
async fn read_answer(
    response: Response<Incoming>,
    url: String,
    max_bytes: usize,
) -> Result<Bytes, CardError> {
    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(header::LOCATION).map_or_else(
            || "-".into(),
            |to| escape_untrusted(&String::from_utf8_lossy(to.as_bytes())),
        );
        return Err(CardError::Redirect {
            status: status.as_u16(),
            url,
            location,
        });
    }
    if !status.is_success() {
        return Err(CardError::Status {
            status: status.as_u16(),
            url,
        });
    }
    let too_large = CardError::TooLarge { limit: max_bytes };
    let announced = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max_bytes as u64) {
        return Err(too_large);
    }
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if read.len() + data.len() > max_bytes {
            return Err(too_large);
        }
        read.extend_from_slice(&data);
    }
    Ok(Bytes::from(read))
}

/// A connection to `port` at the first of `addresses` that accepts it:
/// each is tried when the one before failed or did not connect within
/// [`NEXT_ADDRESS_DELAY`] (attempts then race, the first to connect wins).
async fn connect(addresses: &[IpAddr], port: u16) -> Result<TcpStream, CardError> {
    let failed = |source| CardError::Connect {
        addresses: addresses
            .iter()
            .map(|address| SocketAddr::new(*address, port).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        source,
    };
    let mut waiting = addresses
        .iter()
        .map(|address| SocketAddr::new(*address, port));
    let mut attempts = JoinSet::new();
    let mut last_error = std::io::Error::other("the peer has no overlay address");
    loop {
        if attempts.is_empty() {
            match waiting.next() {
                Some(address) => {
                    attempts.spawn(TcpStream::connect(address));
                }
                None => return Err(failed(last_error)),
            }
        }
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last_error = error,
                Err(error) => last_error = std::io::Error::other(error),
            },
            () = tokio::time::sleep(NEXT_ADDRESS_DELAY), if waiting.len() > 0 => {
                if let Some(address) = waiting.next() {
                    attempts.spawn(TcpStream::connect(address));
                }
            }
        }
    }
}
