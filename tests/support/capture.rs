//! Captures on a TUN interface (raw IP, no link header) with nanosecond
//! timestamps on the wall clock, to say exactly which inner packets the
//! daemon delivered (or the kernel sent) and when.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::lab::{Lab, next_serial};
use super::wait_until;

/// pcap link types of raw IP captures: LINKTYPE_RAW and the two DLT_RAW values.
const RAW_LINKTYPES: [u32; 3] = [101, 12, 14];
const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
const IPV6_HEADER_LEN: usize = 40;

/// IPv6 next-header values used here.
pub const NEXT_TCP: u8 = 6;
/// UDP.
pub const NEXT_UDP: u8 = 17;
/// ICMPv6.
pub const NEXT_ICMPV6: u8 = 58;

/// One captured IPv6 packet and when the kernel saw it.
#[derive(Debug, Clone)]
pub struct Ipv6Record {
    /// Capture time, since the Unix epoch (the wall clock `date` reads).
    pub time: Duration,
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header (no extension headers are followed).
    pub next_header: u8,
    /// Everything after the fixed header, as captured.
    pub payload: Vec<u8>,
}

impl Ipv6Record {
    /// `(source port, destination port)` of a TCP or UDP packet.
    pub fn ports(&self) -> Option<(u16, u16)> {
        if !matches!(self.next_header, NEXT_TCP | NEXT_UDP) || self.payload.len() < 4 {
            return None;
        }
        let p = &self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }

    /// One line for messages.
    pub fn summary(&self) -> String {
        let ports = self
            .ports()
            .map(|(s, d)| format!(" ports {s} -> {d}"))
            .unwrap_or_default();
        format!(
            "{:.6} {} -> {} next header {}{ports}, {} bytes",
            self.time.as_secs_f64(),
            self.src,
            self.dst,
            self.next_header,
            self.payload.len()
        )
    }
}

/// Parses a pcap file of raw IP packets; IPv4 records are skipped. A record
/// cut short at the end (tcpdump still writing) is ignored.
pub fn parse_raw_ipv6(data: &[u8]) -> Result<Vec<Ipv6Record>, String> {
    if data.len() < GLOBAL_HEADER_LEN {
        return Ok(Vec::new());
    }
    let magic = [data[0], data[1], data[2], data[3]];
    let (little, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let u32_at = |off: usize| {
        let b = [data[off], data[off + 1], data[off + 2], data[off + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20) & 0x0fff_ffff;
    if !RAW_LINKTYPES.contains(&linktype) {
        return Err(format!("link type {linktype}, expected raw IP (a TUN)"));
    }
    let mut records = Vec::new();
    let mut off = GLOBAL_HEADER_LEN;
    while off + RECORD_HEADER_LEN <= data.len() {
        let seconds = u64::from(u32_at(off));
        let fraction = u64::from(u32_at(off + 4));
        let caplen = u32_at(off + 8) as usize;
        let start = off + RECORD_HEADER_LEN;
        if start + caplen > data.len() {
            break;
        }
        let time = Duration::from_secs(seconds)
            + if nanos {
                Duration::from_nanos(fraction)
            } else {
                Duration::from_micros(fraction)
            };
        let ip = &data[start..start + caplen];
        if ip.len() >= IPV6_HEADER_LEN && ip[0] >> 4 == 6 {
            let address = |at: usize| {
                let octets: [u8; 16] = ip[at..at + 16].try_into().expect("16 bytes");
                Ipv6Addr::from(octets)
            };
            records.push(Ipv6Record {
                time,
                src: address(8),
                dst: address(24),
                next_header: ip[6],
                payload: ip[IPV6_HEADER_LEN..].to_vec(),
            });
        }
        off = start + caplen;
    }
    Ok(records)
}

/// Reads a raw-IP pcap file.
pub fn read_raw_ipv6(path: &Path) -> Result<Vec<Ipv6Record>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_raw_ipv6(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// A tcpdump writing what crosses one TUN interface to a file.
pub struct TunCapture<'l> {
    lab: &'l Lab,
    pid: u32,
    path: PathBuf,
}

/// What a finished capture holds.
#[derive(Debug)]
pub struct TunCaptureResult {
    /// Every IPv6 packet, in capture order.
    pub packets: Vec<Ipv6Record>,
    /// tcpdump's own report (statistics).
    pub stderr: String,
}

impl<'l> TunCapture<'l> {
    /// Starts tcpdump on `iface` in `ns` with a BPF `filter`, nanosecond
    /// timestamps and headers only (96 bytes per packet); returns once it
    /// listens.
    pub fn start(lab: &'l Lab, ns: &str, iface: &str, filter: &str) -> Result<Self, String> {
        let path = lab
            .dir()
            .join(format!("tun-{iface}-{}.pcap", next_serial()));
        let path_str = path.to_str().ok_or("non-UTF-8 lab path")?.to_string();
        let pid = lab.spawn(
            ns,
            &format!("tcpdump-{iface}"),
            &[
                "tcpdump",
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "--time-stamp-precision",
                "nano",
                "-s",
                "96",
                "-B",
                "16384",
                "-Z",
                "root",
                "-w",
                &path_str,
                filter,
            ],
        )?;
        let listening = wait_until("tcpdump to listen", Duration::from_secs(10), || {
            lab.spawn_output(pid).1.contains("listening on") || !lab.spawn_running(pid)
        });
        if listening.is_err() || !lab.spawn_running(pid) {
            let (_, err) = lab.stop(pid);
            return Err(format!("tcpdump on {iface} in {ns} did not start:\n{err}"));
        }
        Ok(Self { lab, pid, path })
    }

    /// The packets captured so far.
    pub fn packets(&self) -> Result<Vec<Ipv6Record>, String> {
        read_raw_ipv6(&self.path)
    }

    /// Stops tcpdump (which flushes the file). Fails if the kernel dropped
    /// packets before tcpdump saw them: the capture would be incomplete.
    pub fn finish(self) -> Result<TunCaptureResult, String> {
        let (_, stderr) = self.lab.stop(self.pid);
        let drops = stderr.lines().find_map(|line| {
            let line = line.trim();
            line.strip_suffix(" packets dropped by kernel")
                .or_else(|| line.strip_suffix(" packet dropped by kernel"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        match drops {
            Some(0) => {}
            Some(n) => {
                return Err(format!(
                    "tcpdump lost {n} packet(s) in the kernel: the capture is incomplete\n{stderr}"
                ));
            }
            None => return Err(format!("tcpdump did not report its statistics:\n{stderr}")),
        }
        let packets = read_raw_ipv6(&self.path)?;
        Ok(TunCaptureResult { packets, stderr })
    }
}

/// The wall clock now, since the Unix epoch (what capture timestamps use).
pub fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Parses the output of `date +%s%N` (nanoseconds since the epoch).
pub fn parse_date_nanos(text: &str) -> Option<Duration> {
    text.trim()
        .lines()
        .last()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nanosecond_raw_ipv6_records() {
        let mut file = vec![0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0];
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&96u32.to_le_bytes());
        file.extend_from_slice(&101u32.to_le_bytes());
        let mut packet = vec![0x60, 0, 0, 0, 0, 8, NEXT_UDP, 64];
        packet.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        packet.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        packet.extend_from_slice(&[0x1f, 0x90, 0, 53, 0, 8, 0, 0]);
        file.extend_from_slice(&7u32.to_le_bytes());
        file.extend_from_slice(&5u32.to_le_bytes());
        file.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        file.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        file.extend_from_slice(&packet);
        let records = parse_raw_ipv6(&file).expect("parses");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].time, Duration::new(7, 5));
        assert_eq!(records[0].src, Ipv6Addr::LOCALHOST);
        assert_eq!(records[0].ports(), Some((8080, 53)));
        assert_eq!(parse_date_nanos("7000000005\n"), Some(Duration::new(7, 5)));
    }
}
