//! Files of the state directory and other text the daemon reads: the
//! agent's `config.toml` (name, network, rendezvous, auto-approval), the
//! trust store `trust.toml`, the pending requests `pending.toml` (each one
//! restored into a node, as at start-up), `attachments.json`, a control
//! socket request line, and the small text formats inside them (policies,
//! agent IDs, endorsement tokens, rendezvous specs).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{UNIX_START, identity, network};
use agentnet::attach::{ATTACHMENTS_FILE, Attachments};
use agentnet::control::Request;
use agentnet::core::api::NodeConfig;
use agentnet::core::identity::AgentId;
use agentnet::core::node::Node;
use agentnet::core::policy::Policy;
use agentnet::core::text::{escape_untrusted, has_control_chars};
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::state::StateDir;
use agentnet::state::fleet::{AutoApproveConfig, parse_endorsement_token};
use agentnet::state::pending::{load_pending, pending_path};
use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug)]
enum Input {
    Config(String),
    Trust(String),
    Pending(String),
    Attachments(Vec<u8>),
    ControlRequest(Vec<u8>),
    Text(String),
}

fn state_dir() -> &'static (tempfile::TempDir, StateDir) {
    static DIR: OnceLock<(tempfile::TempDir, StateDir)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => panic!("no temporary directory: {error}"),
        };
        let state = StateDir::new(dir.path());
        (dir, state)
    })
}

fn write(path: &std::path::Path, contents: &[u8]) {
    if let Err(error) = std::fs::write(path, contents) {
        panic!("cannot write {}: {error}", path.display());
    }
}

/// Runs the target on one input, decoded as libFuzzer's `fuzz_target!` does.
pub fn run(data: &[u8]) {
    crate::structured(data, |input: Input| {
        let (_, state) = state_dir();
        match input {
            Input::Config(text) => {
                write(&state.config_path(), text.as_bytes());
                if let Ok(Some(config)) = state.load_config() {
                    for spec in &config.rendezvous {
                        let _ = spec.parse::<RendezvousSpec>();
                    }
                }
                if let Ok(rules) = AutoApproveConfig::load(state) {
                    let _ = (rules.is_on(), rules.rules());
                }
            }
            Input::Trust(text) => {
                write(&state.trust_path(), text.as_bytes());
                if let Ok(store) = state.load_trust() {
                    // What the daemon does with each entry.
                    for entry in &store.peers {
                        let _ = entry
                            .endpoint
                            .as_deref()
                            .map(str::parse::<std::net::SocketAddr>);
                        let _ = entry.allow.to_string().parse::<Policy>();
                    }
                    let _ = toml::to_string(&store);
                }
            }
            Input::Pending(text) => {
                write(&pending_path(state), text.as_bytes());
                if let Ok(records) = load_pending(state) {
                    let now = Instant::now();
                    let own: AgentId = identity(1).agent_id();
                    let mut node = Node::new(
                        NodeConfig {
                            identity: identity(1),
                            network: network(),
                            name: "fuzz".into(),
                            tunnel_mtu: 1408,
                        },
                        [0; 32],
                        now,
                        UNIX_START,
                    );
                    for record in records.iter().take(64) {
                        if let Some(pending) = record.restore(own, now, UNIX_START) {
                            node.restore_pending_request(now, pending);
                        }
                    }
                    let _ = node.pending_requests(now + Duration::from_secs(1));
                }
            }
            Input::Attachments(bytes) => {
                write(&state.root().join(ATTACHMENTS_FILE), &bytes);
                let _ = Attachments::load(state);
            }
            Input::ControlRequest(bytes) => {
                let _ = serde_json::from_slice::<Request>(&bytes);
            }
            Input::Text(text) => {
                let _ = text.parse::<Policy>().map(|policy| {
                    let again = policy.to_string().parse::<Policy>();
                    assert_eq!(again.as_ref().ok(), Some(&policy), "policy round trip");
                });
                let _ = text.parse::<AgentId>();
                let _ = parse_endorsement_token(&text);
                // Text from other agents is made inert before it is shown.
                let escaped = escape_untrusted(&text);
                assert!(!has_control_chars(&escaped), "escaped text is inert");
                let _ = text.parse::<RendezvousSpec>();
            }
        }
    });
}
