//! `serve --http`: a reverse proxy from peers to the target, on hyper.
//!
//! Each peer connection is served by hyper-util's automatic server
//! (HTTP/1.1, or HTTP/2 with prior knowledge, i.e. h2c); each request goes
//! to the target over HTTP/1.1 from a small pool of connections. Bodies
//! stream both ways frame by frame, so server-sent events arrive as they
//! are sent. On the way in:
//!
//! - hop-by-hop headers (`Connection` and the headers it names,
//!   `Keep-Alive`, `TE`, `Upgrade`, ...) are removed, as a proxy must;
//! - every header the client sent that a service might take as the
//!   proxy's word is removed, in every spelling and every copy:
//!   `Agentnet-*`, `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, and any name
//!   with an underscore (which CGI-style servers read as a dash);
//! - `Host` becomes the target (`127.0.0.1:8000`), as nginx's `proxy_pass`
//!   sets it, which servers with localhost-only Host checks accept;
//! - the proxy adds `X-Forwarded-For`, `X-Forwarded-Host`,
//!   `X-Forwarded-Proto`, `Forwarded: for=...` with the caller's overlay
//!   address, and `Agentnet-Peer-Id` and `Agentnet-Peer-Name`: the caller's
//!   agent ID and its name in this agent's trust store.
//!
//! A target that does not answer gets the peer a 502 with a short body,
//! and a log line that says why. WebSocket upgrades are not relayed.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::splice::CONNECT_TIMEOUT;
use super::{Caller, ServeSpec};

/// How long a peer may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle connection to a target is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per target.
const POOL_MAX_IDLE: usize = 16;

/// The header with the caller's agent ID.
pub const PEER_ID_HEADER: &str = "agentnet-peer-id";
/// The header with the caller's name in this agent's trust store.
pub const PEER_NAME_HEADER: &str = "agentnet-peer-name";

/// Headers that concern one connection only (RFC 9110 §7.6.1), removed
/// both ways.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Bodies the proxy returns: the target's, streamed, or its own.
type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Requests in flight to targets at once, over every served port and
/// peer connection (each may hold a connection, i.e. a file descriptor,
/// until its response body ends): beyond it, peers get 503.
const MAX_UPSTREAM_REQUESTS: usize = 1024;
/// HTTP/2 streams one peer connection may open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// The connections to targets, shared by all served ports.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    client: Client<HttpConnector, Incoming>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// A target's response body that holds its place among the requests in
/// flight until it ends.
struct PermitBody {
    inner: Incoming,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for PermitBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Upstream {
    /// A pool of HTTP/1.1 connections (made on demand).
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(connector);
        Self {
            client,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_UPSTREAM_REQUESTS)),
        }
    }
}

/// What every request of one peer connection needs.
#[derive(Debug)]
struct Forwarding {
    caller: Caller,
    spec: ServeSpec,
    upstream: Upstream,
}

/// Serves one peer connection until it closes.
pub(crate) async fn serve_connection(
    stream: tokio::net::TcpStream,
    caller: Caller,
    spec: &ServeSpec,
    upstream: &Upstream,
) {
    let forwarding = Arc::new(Forwarding {
        caller,
        spec: spec.clone(),
        upstream: upstream.clone(),
    });
    let service = hyper::service::service_fn(move |request| {
        let forwarding = Arc::clone(&forwarding);
        async move { Ok::<_, Infallible>(forwarding.forward(request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(port = spec.port, %error, "served HTTP connection ended with an error");
    }
}

impl Forwarding {
    async fn forward(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        if request.method() == Method::CONNECT {
            return short_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "agentnet serve: CONNECT is not proxied\n",
            );
        }
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let uri: Uri = match format!("http://{}{path}", self.spec.target).parse() {
            Ok(uri) => uri,
            Err(_) => {
                return short_response(
                    StatusCode::BAD_REQUEST,
                    "agentnet serve: bad request path\n",
                );
            }
        };
        // HTTP/2 carries the host in the URI's authority, not in `Host`.
        let original_host = request.headers().get(header::HOST).cloned().or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        prepare_request_headers(
            request.headers_mut(),
            &self.caller,
            self.spec.target,
            original_host,
        );
        let Ok(permit) = Arc::clone(&self.upstream.in_flight).try_acquire_owned() else {
            tracing::warn!(
                port = self.spec.port,
                peer = %self.caller.name,
                "too many requests in flight to served targets; sent 503 to the peer"
            );
            return short_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "agentnet serve: too many requests in flight\n",
            );
        };
        match self.upstream.client.request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                let body = PermitBody {
                    inner: body,
                    _permit: permit,
                };
                Response::from_parts(parts, body.boxed())
            }
            Err(error) => {
                let why = error_chain(&error);
                tracing::warn!(
                    port = self.spec.port,
                    target = %self.spec.target,
                    peer = %self.caller.name,
                    id = %self.caller.id,
                    error = %why,
                    "the served target did not answer (is the service running?); sent 502 to the peer"
                );
                short_response(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "agentnet serve: the service behind port {} does not answer\n",
                        self.spec.port
                    ),
                )
            }
        }
    }
}

/// Makes a client's request headers fit for the target: see the module
/// docs for what is removed and added.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    caller: &Caller,
    target: SocketAddr,
    original_host: Option<HeaderValue>,
) {
    remove_hop_by_hop(headers);
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| claims_to_be_from_the_proxy(name.as_str()))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(&name);
    }
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(headers, "host", target.to_string());
    set(headers, "x-forwarded-for", caller.address.to_string());
    set(headers, "x-forwarded-proto", "http".to_string());
    if let Some(host) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let node = match caller.address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    set(headers, "forwarded", format!("for={node};proto=http"));
    set(headers, PEER_ID_HEADER, caller.id.to_string());
    // Trust-store names are DNS labels; one that is not is left out.
    set(headers, PEER_NAME_HEADER, caller.name.clone());
}

/// Whether a header, sent by a client, would claim what only the proxy may
/// say (names arrive lowercased). Any name with an underscore counts: CGI,
/// WSGI/ASGI, Rack and PHP map `_` and `-` to the same variable, so
/// `Agentnet_Peer_Id` would join the real `Agentnet-Peer-Id` there (nginx
/// drops such headers by default for the same reason).
fn claims_to_be_from_the_proxy(name: &str) -> bool {
    name.contains('_')
        || name.starts_with("agentnet-")
        || name.starts_with("x-forwarded-")
        || name == "forwarded"
        || name == "x-real-ip"
}

/// Removes the hop-by-hop headers and those `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn short_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;

    fn caller(address: &str) -> Caller {
        Caller {
            id: Identity::from_secret_bytes(&[3; 32])
                .expect("key")
                .agent_id(),
            name: "alice".into(),
            address: address.parse().expect("address"),
        }
    }

    fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().expect("ascii").to_string())
            .collect()
    }

    #[test]
    fn forged_identity_headers_are_removed_in_every_spelling_and_copy() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("Agentnet-Peer-Id", "forged"),
            ("AGENTNET-PEER-ID", "forged-again"),
            ("agentnet-peer-name", "root"),
            ("Agentnet-Peer-Name", "admin"),
            ("Agentnet-Peer-Role", "admin"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"),
            ("Agentnet_Peer_Id", "forged-underscored"),
            ("X_Forwarded_For", "10.0.0.3"),
            ("Some_Other_Header", "dropped too"),
            ("Accept", "text/event-stream"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        let alice = caller("fd12:3456:789a:1::1");
        prepare_request_headers(
            &mut headers,
            &alice,
            "127.0.0.1:8000".parse().expect("target"),
            Some(HeaderValue::from_static("bob.agent.internal:8000")),
        );
        assert_eq!(
            all(&headers, "agentnet-peer-id"),
            vec![alice.id.to_string()]
        );
        assert_eq!(all(&headers, "agentnet-peer-name"), vec!["alice"]);
        assert!(headers.get("agentnet-peer-role").is_none());
        assert_eq!(
            all(&headers, "x-forwarded-for"),
            vec!["fd12:3456:789a:1::1"]
        );
        assert_eq!(
            all(&headers, "x-forwarded-host"),
            vec!["bob.agent.internal:8000"]
        );
        assert_eq!(all(&headers, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(
            all(&headers, "forwarded"),
            vec![r#"for="[fd12:3456:789a:1::1]";proto=http"#]
        );
        assert!(headers.get("x-real-ip").is_none());
        assert!(
            headers.keys().all(|name| !name.as_str().contains('_')),
            "underscored names are gone: {headers:?}"
        );
        assert_eq!(all(&headers, "host"), vec!["127.0.0.1:8000"]);
        assert_eq!(all(&headers, "accept"), vec!["text/event-stream"]);
    }

    #[test]
    fn host_becomes_the_target_and_ipv4_callers_are_unquoted() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("100.64.1.2:8000"));
        prepare_request_headers(
            &mut headers,
            &caller("100.64.9.9"),
            "[::1]:9000".parse().expect("target"),
            Some(HeaderValue::from_static("100.64.1.2:8000")),
        );
        assert_eq!(all(&headers, "host"), vec!["[::1]:9000"]);
        assert_eq!(
            all(&headers, "forwarded"),
            vec!["for=100.64.9.9;proto=http"]
        );
        assert_eq!(all(&headers, "x-forwarded-for"), vec!["100.64.9.9"]);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret-Hop", "1"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic x"),
            ("Content-Type", "application/json"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
        }
        prepare_request_headers(
            &mut headers,
            &caller("100.64.9.9"),
            "127.0.0.1:80".parse().expect("target"),
            None,
        );
        for gone in [
            "connection",
            "keep-alive",
            "x-secret-hop",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "x-forwarded-host",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} kept");
        }
        assert_eq!(all(&headers, "content-type"), vec!["application/json"]);
    }
}
