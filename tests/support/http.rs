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
        &as_strs(&download_args(&url, &fetched, timeout, &[])),
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

/// The command line of curl downloading `url` into `out` within
/// `max_time`: IPv6 literals as they are, no proxy, an HTTP error fails,
/// `extra` options before the URL.
fn download_args(url: &str, out: &Path, max_time: Duration, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["curl", "-g", "-sS", "--fail", "--noproxy", "*"]
        .into_iter()
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
    args.extend([
        "--max-time".into(),
        max_time.as_secs().to_string(),
        "-o".into(),
        path(out).into(),
        url.into(),
    ]);
    args
}

/// Borrowed views of owned arguments.
/// curl's arguments for a GET of `url` to stdout: no proxy, an error on
/// an HTTP failure, at most `max_time`; `extra` (headers, …) before the URL.
pub fn get_args(url: &str, max_time: Duration, extra: &[&str]) -> Vec<String> {
    let max_time = max_time.as_secs().to_string();
    [
        "curl",
        "-sS",
        "--fail",
        "--noproxy",
        "*",
        "--max-time",
        &max_time,
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .chain([url])
    .map(String::from)
    .collect()
}

/// `args` as the `&str`s [`Lab::exec`] takes.
pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A slow download running in the background while a test breaks
/// something: `server` serves random bytes on its overlay address with
/// `python3 -m http.server`, `client` fetches them with curl at a capped
/// rate into the lab directory.
pub struct BackgroundDownload<'l> {
    lab: &'l Lab,
    curl: u32,
    out_file: std::path::PathBuf,
    body: Vec<u8>,
}

impl<'l> BackgroundDownload<'l> {
    /// Serves `len` random bytes from `server` on `[address]:port` and
    /// starts curl in `client`'s namespace on them at `rate` (curl's
    /// `--limit-rate`), giving up after `max_time`.
    pub fn start(
        lab: &'l Lab,
        client: &Agent,
        (server, address, port): (&Agent, std::net::Ipv6Addr, u16),
        len: usize,
        rate: &str,
        max_time: Duration,
    ) -> Result<Self, String> {
        let www = lab.dir().join("www");
        std::fs::create_dir_all(&www).map_err(|e| format!("www dir: {e}"))?;
        let body = random_bytes(len);
        std::fs::write(www.join("big.bin"), &body).map_err(|e| format!("big file: {e}"))?;
        serve_directory(lab, server, address, port, &www)?;
        let out_file = lab.dir().join("download.bin");
        let url = format!("http://[{address}]:{port}/big.bin");
        let args = download_args(&url, &out_file, max_time, &["--limit-rate", rate]);
        let curl = lab.spawn(&client.host.ns, "curl", &as_strs(&args))?;
        Ok(Self {
            lab,
            curl,
            out_file,
            body,
        })
    }

    /// Bytes downloaded so far.
    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.out_file).map_or(0, |m| m.len())
    }

    /// Whether curl is still at it.
    pub fn running(&self) -> bool {
        self.lab.spawn_running(self.curl)
    }

    /// Waits up to `within` for curl to finish; returns the bytes served,
    /// the bytes downloaded and what curl wrote to stderr.
    pub fn finish(self, within: Duration) -> Result<(Vec<u8>, Vec<u8>, String), String> {
        wait_until("the download to finish", within, || !self.running())?;
        let (_, curl_err) = self.lab.stop(self.curl);
        let got = std::fs::read(&self.out_file).unwrap_or_default();
        Ok((self.body, got, curl_err))
    }
}
