//! PCP (RFC 6887) and its predecessor NAT-PMP (RFC 6886), both at the
//! gateway's UDP port 5351, through the `crab_nat` crate: PCP first; a
//! gateway that answers PCP with "unsupported version, use NAT-PMP" gets
//! NAT-PMP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};

use super::schedule::REQUESTED_LIFETIME;
use super::{PortMapError, Protocol};

/// How long to wait for the gateway: 250 ms, then 500 ms and 1 s (at most
/// 1.75 s for a gateway that never answers; the RFCs' own schedules take
/// minutes, too long for a LAN hop).
const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

/// A mapping made with PCP or NAT-PMP.
#[derive(Debug)]
pub struct PmpMapping {
    mapping: PortMapping,
    /// The gateway's external address (PCP says it in the mapping; NAT-PMP
    /// in an answer of its own).
    external_ip: IpAddr,
}

/// Asks `gateway` to forward UDP to `client:port`, for the same external
/// port if it is free.
pub async fn map(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
) -> Result<PmpMapping, PortMapError> {
    let internal = NonZeroU16::new(port).ok_or(PortMapError::NoPort)?;
    let options = PortMappingOptions {
        external_port: Some(internal),
        lifetime_seconds: Some(lifetime_seconds(REQUESTED_LIFETIME)),
        timeout_config: Some(TIMEOUTS),
    };
    let mapping = PortMapping::new(
        gateway.into(),
        IpAddr::V4(client),
        InternetProtocol::Udp,
        internal,
        options,
    )
    .await
    .map_err(|error| PortMapError::Pmp(error.to_string()))?;
    let external_ip = match mapping.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => external_ip,
        PortMappingType::NatPmp => {
            match crab_nat::natpmp::external_address(gateway.into(), Some(TIMEOUTS)).await {
                Ok(address) => IpAddr::V4(address),
                Err(error) => {
                    // Useless without the address: do not leave it behind.
                    let _ = mapping.try_drop().await;
                    return Err(PortMapError::Pmp(format!(
                        "NAT-PMP mapped the port but did not say the external address: {error}"
                    )));
                }
            }
        }
    };
    Ok(PmpMapping {
        mapping,
        external_ip,
    })
}

impl PmpMapping {
    /// PCP or NAT-PMP.
    pub fn protocol(&self) -> Protocol {
        match self.mapping.mapping_type() {
            PortMappingType::Pcp { .. } => Protocol::Pcp,
            PortMappingType::NatPmp => Protocol::NatPmp,
        }
    }

    /// The public endpoint that reaches our socket.
    pub fn external(&self) -> SocketAddr {
        SocketAddr::new(self.external_ip, self.mapping.external_port().get())
    }

    /// The lifetime the gateway granted.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::from(self.mapping.lifetime()))
    }

    /// Asks for the same mapping again (the lifetime starts anew).
    pub async fn renew(&mut self) -> Result<(), PortMapError> {
        self.mapping
            .renew()
            .await
            .map_err(|error| PortMapError::Pmp(error.to_string()))?;
        if let PortMappingType::Pcp { external_ip, .. } = self.mapping.mapping_type() {
            self.external_ip = external_ip;
        }
        Ok(())
    }

    /// Deletes the mapping on the gateway.
    pub async fn delete(self) -> Result<(), PortMapError> {
        self.mapping
            .try_drop()
            .await
            .map_err(|(error, _)| PortMapError::Pmp(error.to_string()))
    }
}

/// A lifetime in the protocols' whole seconds (at least 1: 0 deletes).
fn lifetime_seconds(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Answers every request on 127.0.0.1:5351 with the next of `answers`
    /// (cycling); `None` when the port is taken.
    async fn fake_gateway(answers: Vec<Vec<u8>>) -> Option<tokio::task::JoinHandle<()>> {
        let socket = tokio::net::UdpSocket::bind(("127.0.0.1", crab_nat::GATEWAY_PORT))
            .await
            .ok()?;
        Some(tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            for answer in answers.iter().cycle() {
                let Ok((_, from)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let _ = socket.send_to(answer, from).await;
            }
        }))
    }

    /// Headers that get past the first checks: PCP and NAT-PMP answers
    /// with success or "unsupported version", then garbage or nothing.
    fn crafted() -> Vec<Vec<u8>> {
        let mut answers = vec![Vec::new(), vec![0], vec![2, 0x81, 0, 0]];
        for (version, opcode, result) in
            [(2u8, 0x81u8, 0u8), (2, 0x81, 1), (0, 0x81, 0), (0, 0x80, 0)]
        {
            for len in [4usize, 8, 12, 16, 23, 24, 36, 59, 60, 61, 1100] {
                let mut answer = vec![0xee; len];
                answer[0] = version;
                answer[1] = opcode;
                answer[2] = 0;
                answer[3] = result;
                answers.push(answer);
            }
        }
        answers
    }

    /// A gateway that answers arbitrary bytes never panics the client: each
    /// attempt ends, with an error or (by chance) a mapping.
    #[tokio::test]
    async fn any_answer_from_the_gateway_is_safe() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5351);
        let mut answers = crafted();
        for _ in 0..300 {
            let len = rng.gen_range(0..120);
            let mut answer: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            // Mostly the versions the client looks for.
            if let Some(first) = answer.first_mut() {
                *first = [0, 2, *first][rng.gen_range(0..3)];
            }
            answers.push(answer);
        }
        let count = answers.len();
        let Some(server) = fake_gateway(answers).await else {
            eprintln!("127.0.0.1:{} is taken: skipped", crab_nat::GATEWAY_PORT);
            return;
        };
        let loopback = Ipv4Addr::LOCALHOST;
        for _ in 0..count {
            let attempt = map(loopback, loopback, 7400);
            // Every answer arrives at once: no attempt waits for timeouts.
            let outcome = tokio::time::timeout(Duration::from_secs(10), attempt)
                .await
                .expect("an attempt against a fast gateway ends");
            if let Ok(mapping) = outcome {
                assert_ne!(mapping.external().port(), 0);
            }
        }
        server.abort();
    }
}
