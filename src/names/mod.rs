//! Peer names: the DNS responder on the overlay (`dns`), the service that
//! keeps it, the host's resolver and the attached namespaces' hosts files in
//! step with the trust store (`service`), and the host side of names
//! (`resolver_config`).

#![forbid(unsafe_code)]

pub mod dns;
pub mod resolver_config;
pub mod service;
