//! The fetch against a small HTTP server on loopback: the paths asked,
//! the Host sent, the deadline, the body cap, redirects, fallbacks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::control::services::AdvertisedByPeer;
use crate::core::identity::Identity;

/// The card `tests/apps/a2a_server.py` serves.
const ECHO_CARD: &str = r#"{"name":"echo","description":"Echoes messages over agentnet","version":"1.0.0","skills":[{"id":"echo","name":"echo","description":"echoes"}]}"#;

/// How the test server answers one request.
#[derive(Debug, Clone)]
enum Answer {
    /// A status line, headers and a body (`Content-Length` is added).
    Full {
        status: &'static str,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// Nothing: the connection stays open and silent.
    Silence,
    /// 200 with a chunked body that never ends.
    Endless,
}

fn ok(body: &str) -> Answer {
    Answer::Full {
        status: "200 OK",
        headers: vec!["Content-Type: application/json".into()],
        body: body.as_bytes().to_vec(),
    }
}

fn status(status: &'static str) -> Answer {
    Answer::Full {
        status,
        headers: Vec::new(),
        body: b"no".to_vec(),
    }
}

/// A loopback server (127.0.0.1 only): each connection gets one answer,
/// `answer(path)`; the request heads are kept in order.
struct TestServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    async fn start(answer: fn(&str) -> Answer) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_one(stream, answer, Arc::clone(&kept)));
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }

    /// The request lines (`GET /path HTTP/1.1`).
    fn request_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|head| head.lines().next().map(str::to_string))
            .collect()
    }

    fn target(&self, advertised_path: Option<&str>) -> CardTarget {
        CardTarget {
            peer: "bravo".into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            port: self.port,
            advertised_path: advertised_path.map(Into::into),
        }
    }
}

async fn serve_one(
    mut stream: TcpStream,
    answer: fn(&str) -> Answer,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    requests.lock().expect("requests").push(head);
    match answer(&path) {
        Answer::Full {
            status,
            headers,
            body,
        } => {
            let mut reply = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
            for header in headers {
                reply.push_str(&header);
                reply.push_str("\r\n");
            }
            reply.push_str("Connection: close\r\n\r\n");
            let mut bytes = reply.into_bytes();
            bytes.extend_from_slice(&body);
            let _ = stream.write_all(&bytes).await;
        }
        Answer::Silence => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Answer::Endless => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        }
    }
}

fn limits_with_timeout(timeout: Duration) -> CardLimits {
    CardLimits {
        timeout,
        ..CardLimits::default()
    }
}

#[tokio::test]
async fn a_card_at_the_well_known_path_is_fetched_with_the_overlay_host_name() {
    let server = TestServer::start(|path| match path {
        WELL_KNOWN_CARD_PATH => ok(ECHO_CARD),
        _ => status("404 Not Found"),
    })
    .await;
    let card = fetch_agent_card(&server.target(Some("/")), &CardLimits::default())
        .await
        .expect("card");
    assert_eq!(
        card.fetched_from,
        format!(
            "http://bravo.agent.internal:{}/.well-known/agent-card.json",
            server.port
        )
    );
    assert_eq!(card.from_peer.name, "echo");
    assert_eq!(
        card.from_peer.skills[0].description.as_deref(),
        Some("echoes")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with("GET /.well-known/agent-card.json HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    let host = format!("\r\nhost: bravo.agent.internal:{}\r\n", server.port);
    assert!(
        requests[0].to_lowercase().contains(&host),
        "{}",
        requests[0]
    );
}

#[tokio::test]
async fn a_404_on_the_current_path_falls_back_to_the_older_one() {
    let server = TestServer::start(|path| match path {
        OLDER_WELL_KNOWN_CARD_PATH => ok(ECHO_CARD),
        _ => status("404 Not Found"),
    })
    .await;
    let card = fetch_agent_card(&server.target(None), &CardLimits::default())
        .await
        .expect("card");
    assert!(card.fetched_from.ends_with("/.well-known/agent.json"));
    assert_eq!(
        server.request_lines(),
        [
            "GET /.well-known/agent-card.json HTTP/1.1",
            "GET /.well-known/agent.json HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn an_advertised_json_path_is_the_only_one_asked() {
    let server = TestServer::start(|path| match path {
        "/cards/echo.json" => status("404 Not Found"),
        _ => ok(ECHO_CARD),
    })
    .await;
    let error = fetch_agent_card(
        &server.target(Some("/cards/echo.json")),
        &CardLimits::default(),
    )
    .await
    .expect_err("404");
    assert!(
        matches!(error, CardError::Status { status: 404, .. }),
        "{error}"
    );
    assert_eq!(server.request_lines(), ["GET /cards/echo.json HTTP/1.1"]);
}

#[tokio::test]
async fn a_redirect_is_reported_and_not_followed() {
    let server = TestServer::start(|path| match path {
        WELL_KNOWN_CARD_PATH => Answer::Full {
            status: "302 Found",
            headers: vec!["Location: http://evil.example/.well-known/agent.json".into()],
            body: Vec::new(),
        },
        _ => ok(ECHO_CARD),
    })
    .await;
    let error = fetch_agent_card(&server.target(None), &CardLimits::default())
        .await
        .expect_err("redirect");
    assert_eq!(error.kind(), CardErrorKind::Redirect);
    assert!(
        error
            .to_string()
            .contains("302 at http://bravo.agent.internal"),
        "{error}"
    );
    assert!(
        error.to_string().contains("http://evil.example/"),
        "{error}"
    );
    assert_eq!(server.request_lines().len(), 1, "the redirect was followed");
}

#[tokio::test]
async fn a_body_over_the_cap_is_given_up_announced_or_not() {
    let announced = TestServer::start(|_| ok(&" ".repeat(100_000))).await;
    let error = fetch_agent_card(&announced.target(None), &CardLimits::default())
        .await
        .expect_err("too large");
    assert!(
        matches!(error, CardError::TooLarge { limit: 65536 }),
        "{error}"
    );

    let endless = TestServer::start(|_| Answer::Endless).await;
    let started = Instant::now();
    let limits = limits_with_timeout(Duration::from_secs(10));
    let error = fetch_agent_card(&endless.target(None), &limits)
        .await
        .expect_err("too large");
    assert_eq!(error.kind(), CardErrorKind::TooLarge, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_silent_server_times_out_at_the_deadline() {
    let server = TestServer::start(|_| Answer::Silence).await;
    let started = Instant::now();
    let limits = limits_with_timeout(Duration::from_millis(300));
    let error = fetch_agent_card(&server.target(None), &limits)
        .await
        .expect_err("timeout");
    assert!(matches!(error, CardError::Timeout { .. }), "{error}");
    assert_eq!(error.to_string(), "no card within 300 ms");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn html_a_server_error_and_an_empty_body_are_told_apart() {
    let server = TestServer::start(|path| match path {
        WELL_KNOWN_CARD_PATH => Answer::Full {
            status: "200 OK",
            headers: vec!["Content-Type: text/html".into()],
            body: b"<html>hi</html>".to_vec(),
        },
        "/broken.json" => status("500 Internal Server Error"),
        _ => ok(""),
    })
    .await;
    let limits = CardLimits::default();
    let html = fetch_agent_card(&server.target(None), &limits).await;
    assert!(matches!(html, Err(CardError::NotJson(_))), "{html:?}");
    let broken = fetch_agent_card(&server.target(Some("/broken.json")), &limits).await;
    assert!(
        matches!(broken, Err(CardError::Status { status: 500, .. })),
        "{broken:?}"
    );
    let empty = fetch_agent_card(&server.target(Some("/empty.json")), &limits).await;
    assert!(matches!(empty, Err(CardError::NotJson(_))), "{empty:?}");
}

#[tokio::test]
async fn a_path_that_makes_no_request_is_refused_before_connecting() {
    for path in ["/a<b>.json", "/card#x.json"] {
        let target = CardTarget {
            peer: "bravo".into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            port: 9,
            advertised_path: Some(path.into()),
        };
        let error = fetch_agent_card(&target, &CardLimits::default())
            .await
            .expect_err("bad path");
        assert_eq!(error.kind(), CardErrorKind::BadTarget, "{path}: {error}");
    }
}

fn peer_service(kind: &str, port: u16, path: Option<&str>) -> PeerService {
    let id = Identity::from_secret_bytes(&[2; 32])
        .expect("key")
        .agent_id();
    PeerService {
        peer: "bravo".into(),
        peer_id: id,
        // Nothing listens on ::1 here: the fetch moves on to IPv4.
        address: Ipv6Addr::LOCALHOST,
        address4: Some(Ipv4Addr::LOCALHOST),
        url: format!("http://bravo.agent.internal:{port}/"),
        from_peer: AdvertisedByPeer {
            kind: kind.into(),
            port,
            path: path.map(Into::into),
            name: None,
        },
        last_seen_unix: 0,
        last_seen_age_s: 0.0,
        session_up: true,
    }
}

#[tokio::test]
async fn cards_are_fetched_for_a2a_services_only_in_order_over_either_family() {
    let server = TestServer::start(|_| ok(ECHO_CARD)).await;
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let closed_port = closed.local_addr().expect("address").port();
    drop(closed);
    let services = vec![
        peer_service("mcp", server.port, Some("/mcp")),
        peer_service("a2a", server.port, None),
        peer_service("a2a", closed_port, None),
    ];
    let listed = fetch_cards(services.clone(), CardLimits::default()).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].service, services[0]);
    assert!(listed[0].card.is_none() && listed[0].card_error.is_none());
    assert_eq!(
        listed[1]
            .card
            .as_ref()
            .map(|card| card.from_peer.name.as_str()),
        Some("echo")
    );
    let error = listed[2].card_error.as_ref().expect("no card");
    assert_eq!(error.kind, CardErrorKind::Connect, "{}", error.message);
    assert!(error.message.contains("[::1]:"), "{}", error.message);
    let json = serde_json::to_value(&listed).expect("json");
    assert_eq!(json[1]["peer"], "bravo");
    assert_eq!(json[1]["card"]["from_peer"]["name"], "echo");
    assert_eq!(json[2]["card_error"]["kind"], "connect");
    assert!(json[0].get("card").is_none() && json[0].get("card_error").is_none());
    assert_eq!(server.request_lines().len(), 1, "the mcp service was asked");
}

#[tokio::test]
async fn many_silent_cards_are_given_up_together_at_one_deadline() {
    let server = TestServer::start(|_| Answer::Silence).await;
    // Three times as many as are fetched at once: one after another in
    // waves they would take three deadlines.
    let services: Vec<PeerService> = (0..3 * MAX_CONCURRENT_FETCHES)
        .map(|_| peer_service("a2a", server.port, None))
        .collect();
    let limits = limits_with_timeout(Duration::from_millis(400));
    let started = Instant::now();
    let listed = fetch_cards(services, limits).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(listed.len(), 3 * MAX_CONCURRENT_FETCHES);
    for entry in &listed {
        let error = entry.card_error.as_ref().expect("no card");
        assert_eq!(error.kind, CardErrorKind::Timeout, "{}", error.message);
    }
}
