//! Allow-policies: which inbound connections a peer may open to this agent
//! (DESIGN.md §3). `all`, `none` (only replies to this agent's own flows),
//! or a list such as `tcp:22,tcp:8000-8100,udp:53,icmp`.

pub mod conntrack;

use std::fmt;
use std::str::FromStr;

/// Errors in the text of a policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The policy text is empty.
    #[error("empty policy: use `all`, `none` or a list such as tcp:80,udp:53,icmp")]
    Empty,
    /// An item does not name tcp, udp or icmp.
    #[error("unknown protocol in {0:?}: expected tcp:PORT[-PORT], udp:PORT[-PORT] or icmp")]
    UnknownProtocol(String),
    /// A port or range is not a number from 1 to 65535, or is reversed.
    #[error("bad port range in {0:?}: ports are 1-65535 and a range is LOW-HIGH")]
    BadPorts(String),
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for one port).
    pub last: u16,
}

impl PortRange {
    /// Whether the port lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    fn is_within(&self, other: &PortRange) -> bool {
        other.first <= self.first && self.last <= other.last
    }
}

/// One allowed kind of inbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllowRule {
    /// TCP connections to these ports.
    Tcp(PortRange),
    /// UDP flows to these ports.
    Udp(PortRange),
    /// ICMPv6 echo requests (ping).
    Icmp,
}

/// What a peer may open towards this agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every port and protocol.
    #[default]
    All,
    /// Only what the rules list; no rules is `none`.
    Only(Vec<AllowRule>),
}

/// The transport protocol and destination port of an inbound packet, as far
/// as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    /// TCP to a port.
    Tcp(u16),
    /// UDP to a port.
    Udp(u16),
    /// ICMPv6 echo request.
    IcmpEcho,
    /// Anything else (other protocols, ICMP informational types).
    Other,
}

impl Policy {
    /// Nothing inbound but replies to flows this agent opened (`none`).
    pub fn none() -> Self {
        Policy::Only(Vec::new())
    }

    /// Whether the policy allows a new inbound flow of this kind.
    pub fn allows(&self, kind: InboundKind) -> bool {
        let rules = match self {
            Policy::All => return true,
            Policy::Only(rules) => rules,
        };
        rules.iter().any(|rule| match (rule, kind) {
            (AllowRule::Tcp(range), InboundKind::Tcp(port)) => range.contains(port),
            (AllowRule::Udp(range), InboundKind::Udp(port)) => range.contains(port),
            (AllowRule::Icmp, InboundKind::IcmpEcho) => true,
            _ => false,
        })
    }

    /// What both policies allow (the narrower of a request and a cap).
    pub fn intersection(&self, other: &Policy) -> Policy {
        let (mine, theirs) = match (self, other) {
            (Policy::All, other) | (other, Policy::All) => return other.clone(),
            (Policy::Only(mine), Policy::Only(theirs)) => (mine, theirs),
        };
        let overlap = |a: &PortRange, b: &PortRange| {
            let range = PortRange {
                first: a.first.max(b.first),
                last: a.last.min(b.last),
            };
            (range.first <= range.last).then_some(range)
        };
        let mut rules = Vec::new();
        for rule in mine {
            for other_rule in theirs {
                let common = match (rule, other_rule) {
                    (AllowRule::Tcp(a), AllowRule::Tcp(b)) => overlap(a, b).map(AllowRule::Tcp),
                    (AllowRule::Udp(a), AllowRule::Udp(b)) => overlap(a, b).map(AllowRule::Udp),
                    (AllowRule::Icmp, AllowRule::Icmp) => Some(AllowRule::Icmp),
                    _ => None,
                };
                if let Some(common) = common
                    && !rules.contains(&common)
                {
                    rules.push(common);
                }
            }
        }
        Policy::Only(rules)
    }

    /// Whether everything this policy allows is also allowed by `wider`.
    pub fn is_within(&self, wider: &Policy) -> bool {
        match (self, wider) {
            (_, Policy::All) => true,
            (Policy::All, Policy::Only(_)) => false,
            (Policy::Only(rules), Policy::Only(wider_rules)) => rules.iter().all(|rule| {
                wider_rules
                    .iter()
                    .any(|wider_rule| match (rule, wider_rule) {
                        (AllowRule::Tcp(a), AllowRule::Tcp(b)) => a.is_within(b),
                        (AllowRule::Udp(a), AllowRule::Udp(b)) => a.is_within(b),
                        (AllowRule::Icmp, AllowRule::Icmp) => true,
                        _ => false,
                    })
            }),
        }
    }
}

fn parse_ports(item: &str, text: &str) -> Result<PortRange, PolicyError> {
    let bad = || PolicyError::BadPorts(item.to_string());
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (first, last),
        None => (text, text),
    };
    let first: u16 = first.trim().parse().map_err(|_| bad())?;
    let last: u16 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || last < first {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PolicyError::Empty);
        }
        if text.eq_ignore_ascii_case("all") {
            return Ok(Policy::All);
        }
        if text.eq_ignore_ascii_case("none") {
            return Ok(Policy::none());
        }
        let mut rules = Vec::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let lower = item.to_ascii_lowercase();
            let rule = if lower == "icmp" || lower == "icmpv6" {
                AllowRule::Icmp
            } else if let Some(ports) = lower.strip_prefix("tcp:") {
                AllowRule::Tcp(parse_ports(item, ports)?)
            } else if let Some(ports) = lower.strip_prefix("udp:") {
                AllowRule::Udp(parse_ports(item, ports)?)
            } else {
                return Err(PolicyError::UnknownProtocol(item.to_string()));
            };
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
        if rules.is_empty() {
            return Err(PolicyError::Empty);
        }
        Ok(Policy::Only(rules))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = match self {
            Policy::All => return f.write_str("all"),
            Policy::Only(rules) if rules.is_empty() => return f.write_str("none"),
            Policy::Only(rules) => rules,
        };
        for (position, rule) in rules.iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            let (protocol, range) = match rule {
                AllowRule::Icmp => {
                    f.write_str("icmp")?;
                    continue;
                }
                AllowRule::Tcp(range) => ("tcp", range),
                AllowRule::Udp(range) => ("udp", range),
            };
            if range.first == range.last {
                write!(f, "{protocol}:{}", range.first)?;
            } else {
                write!(f, "{protocol}:{}-{}", range.first, range.last)?;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_lists_and_ranges() {
        let policy: Policy = "tcp:22, tcp:8000-8100,udp:53,icmp".parse().expect("valid");
        assert!(policy.allows(InboundKind::Tcp(22)));
        assert!(policy.allows(InboundKind::Tcp(8050)));
        assert!(!policy.allows(InboundKind::Tcp(8101)));
        assert!(policy.allows(InboundKind::Udp(53)));
        assert!(!policy.allows(InboundKind::Udp(22)));
        assert!(policy.allows(InboundKind::IcmpEcho));
        assert!(!policy.allows(InboundKind::Other));
        assert_eq!(policy.to_string(), "tcp:22,tcp:8000-8100,udp:53,icmp");
    }

    #[test]
    fn all_allows_everything() {
        let policy: Policy = "ALL".parse().expect("valid");
        assert!(policy.allows(InboundKind::Tcp(1)));
        assert!(policy.allows(InboundKind::Other));
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        assert_eq!("".parse::<Policy>(), Err(PolicyError::Empty));
        assert!(matches!(
            "sctp:1".parse::<Policy>(),
            Err(PolicyError::UnknownProtocol(_))
        ));
        assert!(matches!(
            "tcp:0".parse::<Policy>(),
            Err(PolicyError::BadPorts(_))
        ));
        assert!(matches!(
            "tcp:90-80".parse::<Policy>(),
            Err(PolicyError::BadPorts(_))
        ));
        assert!(matches!(
            "tcp:70000".parse::<Policy>(),
            Err(PolicyError::BadPorts(_))
        ));
    }

    #[test]
    fn none_allows_nothing_and_round_trips() {
        let none: Policy = "none".parse().expect("valid");
        assert_eq!(none, Policy::none());
        assert_eq!(none.to_string(), "none");
        assert!(!none.allows(InboundKind::Tcp(22)));
        assert!(!none.allows(InboundKind::IcmpEcho));
        assert!(none.is_within(&"tcp:80".parse().expect("valid")));
    }

    #[test]
    fn intersection_is_what_both_allow() {
        let request: Policy = "tcp:22,tcp:8000-8100,udp:53,icmp".parse().expect("valid");
        let cap: Policy = "tcp:8080-9000,udp:53-54".parse().expect("valid");
        let both = request.intersection(&cap);
        assert_eq!(both.to_string(), "tcp:8080-8100,udp:53");
        assert_eq!(cap.intersection(&request), both);
        assert_eq!(request.intersection(&Policy::All), request);
        assert_eq!(Policy::All.intersection(&cap), cap);
        assert_eq!(
            request.intersection(&"tcp:443".parse().expect("valid")),
            Policy::none()
        );
        assert!(both.is_within(&request) && both.is_within(&cap));
    }

    #[test]
    fn narrower_policy_is_within_wider() {
        let wide: Policy = "tcp:8000-8100,icmp".parse().expect("valid");
        let narrow: Policy = "tcp:8080".parse().expect("valid");
        assert!(narrow.is_within(&wide));
        assert!(!wide.is_within(&narrow));
        assert!(!Policy::All.is_within(&wide));
        assert!(wide.is_within(&Policy::All));
    }

    proptest! {
        #[test]
        fn display_round_trips(text in "[a-z0-9:,\\- ]{0,40}") {
            if let Ok(policy) = text.parse::<Policy>() {
                prop_assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
            }
        }
    }
}
