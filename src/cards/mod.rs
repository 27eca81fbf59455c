//! A2A Agent Cards of the `a2a` services trusted peers advertise: fetched
//! over the overlay ([`fetch_agent_card`], [`fetch_cards`]) and summed up
//! ([`AgentCardSummary`]) for `agentnet services --cards` and for any other
//! caller (the MCP server).
//!
//! A card is another agent's text, and the fetch is made to be safe to
//! point at a hostile one:
//!
//! - the connection goes to the peer's overlay address from the services
//!   list (IPv6, then IPv4), never to a host the card or a redirect names;
//!   the request says `Host: NAME.agent.internal:PORT`, plain `http://`
//!   over the encrypted overlay;
//! - one deadline covers the whole fetch (3 s by default), the body is read
//!   up to a cap (64 KiB) and not a byte further, and redirects are
//!   reported, never followed;
//! - the path is the advertised one if it ends in `.json`, otherwise
//!   `/.well-known/agent-card.json` (the current A2A spec) and, after a
//!   404, `/.well-known/agent.json` (the spec before 0.3);
//! - what is kept of the card (name, description, version, interfaces,
//!   skills) is capped in count and length and escaped
//!   ([`crate::core::text`]), under `from_peer`: data, never instructions.
//!
//! [`summary`] parses (no I/O); [`fetch`] talks HTTP/1.1 with hyper.

#![forbid(unsafe_code)]

pub mod fetch;
pub mod summary;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::fetch::{CardTarget, fetch_agent_card, fetch_cards};
pub use self::summary::{AgentCardSummary, CardFromPeer, CardInterface, CardSkill};
use crate::control::services::PeerService;

/// The current A2A spec's well-known path of a card.
pub const WELL_KNOWN_CARD_PATH: &str = "/.well-known/agent-card.json";
/// The well-known path before A2A 0.3, tried after a 404 on the current one.
pub const OLDER_WELL_KNOWN_CARD_PATH: &str = "/.well-known/agent.json";
/// Cards fetched at once by [`fetch_cards`].
pub const MAX_CONCURRENT_FETCHES: usize = 8;

/// How far one fetch may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardLimits {
    /// The whole fetch: connecting, every path tried, reading the body.
    pub timeout: Duration,
    /// The most bytes of a body read; a longer one is given up.
    pub max_body_bytes: usize,
    /// Skills kept of a card (the others are only counted).
    pub max_skills: usize,
    /// Interfaces kept of a card.
    pub max_interfaces: usize,
}

impl Default for CardLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            max_body_bytes: 64 * 1024,
            max_skills: 32,
            max_interfaces: 8,
        }
    }
}

/// Why a card could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The service is not one whose card can be fetched (its path, or the
    /// peer's name, makes no request).
    #[error("no card to fetch: {0}")]
    BadTarget(String),
    /// No overlay address of the peer accepted the connection.
    #[error("cannot connect to {addresses}: {source}")]
    Connect {
        /// The addresses tried.
        addresses: String,
        /// The last failure.
        #[source]
        source: std::io::Error,
    },
    /// The fetch took longer than [`CardLimits::timeout`].
    #[error("no card within {} ms", after.as_millis())]
    Timeout {
        /// The limit.
        after: Duration,
    },
    /// The HTTP exchange failed (the peer closed, or spoke no HTTP/1.1).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The peer answered with a status other than 2xx or a redirect.
    #[error("HTTP status {status} at {url}")]
    Status {
        /// The status code.
        status: u16,
        /// The URL asked for.
        url: String,
    },
    /// The peer answered with a redirect, which is not followed.
    #[error("HTTP status {status} at {url}, a redirect to {location} (not followed)")]
    Redirect {
        /// The status code.
        status: u16,
        /// The URL asked for.
        url: String,
        /// Where it pointed (the peer's text, escaped; `-` if nowhere).
        location: String,
    },
    /// The body is longer than [`CardLimits::max_body_bytes`].
    #[error("the card is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body is not JSON.
    #[error("the card is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but no Agent Card (not an object, or no name).
    #[error("not an Agent Card: {0}")]
    NotACard(String),
}

/// What went wrong, as one word for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardErrorKind {
    /// [`CardError::BadTarget`].
    BadTarget,
    /// [`CardError::Connect`].
    Connect,
    /// [`CardError::Timeout`].
    Timeout,
    /// [`CardError::Http`].
    Http,
    /// [`CardError::Status`].
    HttpStatus,
    /// [`CardError::Redirect`].
    Redirect,
    /// [`CardError::TooLarge`].
    TooLarge,
    /// [`CardError::NotJson`].
    NotJson,
    /// [`CardError::NotACard`].
    NotACard,
}

impl CardError {
    /// The kind of failure.
    pub fn kind(&self) -> CardErrorKind {
        match self {
            CardError::BadTarget(_) => CardErrorKind::BadTarget,
            CardError::Connect { .. } => CardErrorKind::Connect,
            CardError::Timeout { .. } => CardErrorKind::Timeout,
            CardError::Http(_) => CardErrorKind::Http,
            CardError::Status { .. } => CardErrorKind::HttpStatus,
            CardError::Redirect { .. } => CardErrorKind::Redirect,
            CardError::TooLarge { .. } => CardErrorKind::TooLarge,
            CardError::NotJson(_) => CardErrorKind::NotJson,
            CardError::NotACard(_) => CardErrorKind::NotACard,
        }
    }
}

/// A [`CardError`] as `--json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardErrorReport {
    /// What went wrong.
    pub kind: CardErrorKind,
    /// Why, for people (any text of the peer in it is escaped).
    pub message: String,
}

impl From<&CardError> for CardErrorReport {
    fn from(error: &CardError) -> Self {
        Self {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// One service of a trusted peer and, for an `a2a` service, its card or
/// why there is none (`agentnet services --cards --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceWithCard {
    /// The service as `agentnet services` lists it.
    #[serde(flatten)]
    pub service: PeerService,
    /// Its Agent Card (`a2a` services whose card was fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<AgentCardSummary>,
    /// Why there is no card (`a2a` services whose card was not fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_error: Option<CardErrorReport>,
}

#[cfg(test)]
mod tests;
