//! A file served by `python3 -m http.server` on one agent's overlay address
//! and fetched with curl from another: real programs, checked byte for byte.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Agent, Lab, random_bytes, wait_until};

/// `python3 -m http.server PORT` bound to `bind` in `agent`'s namespace,
/// serving `dir`; returns its PID once it listens (stopped again if it
/// never does).
pub fn serve_directory(
    lab: &Lab,
    agent: &Agent,
    bind: impl Into<std::net::IpAddr>,
    port: u16,
    dir: &Path,
) -> Result<u32, String> {
    let port_text = port.to_string();
    let bind = bind.into().to_string();
    let pid = lab.spawn(
        &agent.host.ns,
        &format!("http-{port}"),
        &[
            "python3",
            "-m",
            "http.server",
            &port_text,
            "--bind",
            &bind,
            "--directory",
            path(dir),
        ],
    )?;
    if let Err(e) = wait_listening(lab, agent, port) {
        let (_, err) = lab.stop(pid);
        return Err(format!("{e}; server stderr:\n{err}"));
    }
    Ok(pid)
}

/// Waits until something in `agent`'s namespace listens on TCP `port`.
pub fn wait_listening(lab: &Lab, agent: &Agent, port: u16) -> Result<(), String> {
    let filter = format!(":{port}");
    wait_until(
        &format!("a listener on port {port}"),
        Duration::from_secs(15),
        || {
            lab.exec(&agent.host.ns, &["ss", "-Hltn", "sport", "=", &filter])
                .is_ok_and(|o| o.stdout.contains("LISTEN"))
        },
    )
}

/// Serves `len` random bytes from `server` on `[bind]:port`, fetches them
/// from `client` with curl within `timeout`, and compares. Returns how long
/// the download took.
pub fn fetch_over_overlay(
    lab: &Lab,
    client: &Agent,
    server: &Agent,
    bind: std::net::Ipv6Addr,
    port: u16,
    len: usize,
    timeout: Duration,
) -> Result<Duration, String> {
    fetch_from(
        lab,
        client,
        server,
        (bind.into(), bind.into()),
        port,
        len,
        timeout,
    )
}

/// As [`fetch_over_overlay`], the server bound to `bind` and the client
/// fetching from `target` (e.g. bound to `0.0.0.0`, fetched from the
/// agent's IPv4 overlay address).
pub fn fetch_from(
    lab: &Lab,
    client: &Agent,
    server: &Agent,
    (bind, target): (std::net::IpAddr, std::net::IpAddr),
    port: u16,
    len: usize,
    timeout: Duration,
) -> Result<Duration, String> {
    let www = lab.dir().join(format!("www-{}-{port}", server.name));
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    let blob = random_bytes(len);
    std::fs::write(www.join("blob.bin"), &blob).map_err(|e| e.to_string())?;

    let pid = serve_directory(lab, server, bind, port, &www)?;
    let fetched = www.join("fetched.bin");
    let url = format!(
        "http://{}/blob.bin",
        std::net::SocketAddr::new(target, port)
    );
    let started = Instant::now();
    let curl = lab.exec(
        &client.host.ns,
        &[
            "curl",
            "-g",
            "-sS",
            "--fail",
            "--noproxy",
            "*",
            "--max-time",
            &timeout.as_secs().to_string(),
            "-o",
            path(&fetched),
            &url,
        ],
    );
    let took = started.elapsed();
    let (_, server_log) = lab.stop(pid);
    let curl = curl?;
    if !curl.ok() {
        return Err(format!("{}\nserver log:\n{server_log}", curl.describe()));
    }
    let got = std::fs::read(&fetched).map_err(|e| format!("{}: {e}", fetched.display()))?;
    // Free the lab directory of the two copies at once.
    let _ = std::fs::remove_dir_all(&www);
    if got != blob {
        let differs_at = got.iter().zip(&blob).position(|(a, b)| a != b);
        return Err(format!(
            "downloaded {} bytes that differ from the {} served (first difference at {differs_at:?})",
            got.len(),
            blob.len()
        ));
    }
    Ok(took)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
