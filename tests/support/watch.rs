//! Proving that one lab host sends another nothing: a tcpdump on the
//! watcher's underlay, shown to be live by the sender's own control pings
//! before the test's traffic starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::lab::{Host, Lab, next_serial};
use super::pcap::{self, Capture, Ipv4Packet};
use super::wait_until;

/// Echo requests the sender sends the watcher to prove the capture works.
pub const CONTROL_PINGS: usize = 3;

const ICMP_ECHO_REQUEST: u8 = 8;

/// A running capture on the watcher of what the sender sends it.
pub struct ReplyWatch<'l> {
    lab: &'l Lab,
    pid: u32,
    path: PathBuf,
    sender: Ipv4Addr,
    watcher: Ipv4Addr,
}

/// What the watch saw.
#[derive(Debug)]
pub struct WatchResult {
    /// The whole capture.
    pub capture: Capture,
    /// How many of the sender's control pings it holds.
    pub control_pings: usize,
    /// Every other packet from the sender: what the test says must not exist.
    pub from_sender: Vec<Ipv4Packet>,
}

impl<'l> ReplyWatch<'l> {
    /// Starts tcpdump on `watcher`'s underlay. It records every IPv4 packet
    /// from `sender` except those addressed to a host in `ignore` (a bridge
    /// floods those to every port until it learns where they go), and the UDP
    /// the watcher sends the sender. Returns once tcpdump listens and the
    /// sender's control pings to the watcher are in the file.
    pub fn start(
        lab: &'l Lab,
        sender: &Host,
        watcher: &Host,
        ignore: &[Ipv4Addr],
    ) -> Result<Self, String> {
        let (s, w) = (sender.ip, watcher.ip);
        let not_ignored: String = ignore
            .iter()
            .map(|ip| format!(" and not dst host {ip}"))
            .collect();
        let filter = format!(
            "(ip and src host {s}{not_ignored}) or (udp and src host {w} and dst host {s})"
        );
        let path = lab
            .dir()
            .join(format!("watch-{}-{}.pcap", watcher.role, next_serial()));
        let path_str = path.to_str().ok_or("non-UTF-8 lab path")?.to_string();
        // -U --immediate-mode: every packet reaches the file at once, so the
        // test can poll it. -s/-B: in immediate mode each ring slot holds one
        // snapshot, so a 256 KiB default snapshot leaves a handful of slots
        // and a burst overflows them; 1600 bytes holds a whole 1500-byte
        // frame. -Z root: write the file without dropping to the tcpdump user
        // (the lab directory is private).
        let pid = lab.spawn(
            &watcher.ns,
            &format!("tcpdump-{}", watcher.role),
            &[
                "tcpdump",
                "-i",
                &watcher.iface,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "1600",
                "-B",
                "8192",
                "-Z",
                "root",
                "-w",
                &path_str,
                &filter,
            ],
        )?;
        let watch = Self {
            lab,
            pid,
            path,
            sender: s,
            watcher: w,
        };
        let listening = wait_until("tcpdump to listen", Duration::from_secs(10), || {
            lab.spawn_output(pid).1.contains("listening on") || !lab.spawn_running(pid)
        });
        if listening.is_err() || !lab.spawn_running(pid) {
            let (_, err) = lab.stop(pid);
            return Err(format!("tcpdump on {} did not start:\n{err}", watcher.ns));
        }

        let count = CONTROL_PINGS.to_string();
        lab.exec_ok(
            &sender.ns,
            &[
                "ping",
                "-n",
                "-c",
                &count,
                "-i",
                "0.2",
                "-W",
                "1",
                &w.to_string(),
            ],
        )?;
        wait_until(
            "the sender's control pings in the capture",
            Duration::from_secs(5),
            || {
                watch
                    .capture()
                    .is_ok_and(|c| watch.count_control(&c) >= CONTROL_PINGS)
            },
        )?;
        Ok(watch)
    }

    /// The capture so far.
    pub fn capture(&self) -> Result<Capture, String> {
        pcap::read(&self.path)
    }

    fn is_control(&self, p: &Ipv4Packet) -> bool {
        p.src == self.sender && p.dst == self.watcher && p.icmp_type() == Some(ICMP_ECHO_REQUEST)
    }

    fn count_control(&self, c: &Capture) -> usize {
        c.ipv4.iter().filter(|p| self.is_control(p)).count()
    }

    /// Stops tcpdump (which flushes the file) and sorts what it captured.
    pub fn finish(self) -> Result<WatchResult, String> {
        let (_, stderr) = self.lab.stop(self.pid);
        // A packet the kernel dropped before tcpdump saw it could be the very
        // reply the test is looking for: an incomplete capture proves nothing.
        match kernel_drops(&stderr) {
            Some(0) => {}
            Some(n) => {
                return Err(format!(
                    "tcpdump lost {n} packet(s) in the kernel: the capture is incomplete\n{stderr}"
                ));
            }
            None => return Err(format!("tcpdump did not report its statistics:\n{stderr}")),
        }
        let capture = self
            .capture()
            .map_err(|e| format!("{e}\ntcpdump stderr:\n{stderr}"))?;
        let control_pings = self.count_control(&capture);
        if control_pings < CONTROL_PINGS {
            return Err(format!(
                "the capture lost the sender's control pings ({control_pings} of {CONTROL_PINGS})"
            ));
        }
        let from_sender = capture
            .ipv4
            .iter()
            .filter(|p| p.src == self.sender && !self.is_control(p))
            .cloned()
            .collect();
        Ok(WatchResult {
            capture,
            control_pings,
            from_sender,
        })
    }
}

/// `N` from tcpdump's closing line "N packets dropped by kernel".
fn kernel_drops(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_suffix(" packets dropped by kernel"))
        .or_else(|| {
            stderr
                .lines()
                .find_map(|l| l.trim().strip_suffix(" packet dropped by kernel"))
        })
        .and_then(|n| n.trim().parse().ok())
}

/// Sends each datagram from namespace `ns` to `to` (python3, one socket,
/// bound to `from_port` if given). Returns how many were sent.
pub fn send_udp(
    lab: &Lab,
    ns: &str,
    to: SocketAddr,
    from_port: Option<u16>,
    datagrams: &[Vec<u8>],
) -> Result<usize, String> {
    const SENDER: &str = r#"
import socket, sys
host, port, bind_port, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
records = open(path).read().split("\n")[:-1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if bind_port:
    s.bind(("", bind_port))
for r in records:
    s.sendto(bytes.fromhex(r), (host, port))
print(len(records))
"#;
    let file = lab.dir().join(format!("datagrams-{}.hex", next_serial()));
    let hex: String = datagrams
        .iter()
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect();
    std::fs::write(&file, hex).map_err(|e| e.to_string())?;
    let out = lab.exec_ok(
        ns,
        &[
            "python3",
            "-c",
            SENDER,
            &to.ip().to_string(),
            &to.port().to_string(),
            &from_port.unwrap_or(0).to_string(),
            file.to_str().ok_or("non-UTF-8 lab path")?,
        ],
    )?;
    let sent: usize = out.stdout.trim().parse().map_err(|_| out.describe())?;
    if sent != datagrams.len() {
        return Err(format!("sent {sent} of {} datagrams", datagrams.len()));
    }
    Ok(sent)
}
