//! The daemon's name service: keeps `NAME.agent.internal` for every trusted
//! peer answerable everywhere this node serves — the responder at
//! `PREFIX::53` ([`super::dns`]), the host's resolver configuration
//! ([`super::resolver_config`]) and the hosts files of attached namespaces
//! ([`crate::attach`]) — and takes it all back on shutdown.
//!
//! The event loop calls [`NameService::sync`] with the trust store and the
//! node after anything that may have changed them; only a change of the
//! trusted names or of their addresses causes any write. A name carries
//! its agent's IPv6 address always, and its IPv4 address when the node
//! routes IPv4 to it ([`Ipv4Route::Routed`]): with IPv4 off, or for a peer
//! whose derived IPv4 address another agent keeps, the name answers AAAA
//! only and hosts files list only the IPv6 line.
//!
//! The responder also answers DNS-SD for the services trusted peers
//! advertised here. The event loop calls [`NameService::sync_services`]
//! on every wake: it compares the node's O(1) count of changes
//! ([`Node::learned_services_changes`]) with the one it last applied and
//! only when it moved walks the peers, joins them with the trust store
//! (trusted peers, under their names there) and hands the result to the
//! responder; a change of the names does the same. That walk is
//! O(peers × services), and a trusted peer can move the count with every
//! datagram (a new generation each): what peers advertised is applied at
//! most once per [`SERVICES_REBUILD_INTERVAL`], and the loop wakes for
//! the rest ([`NameService::services_deadline`]).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dns::{DnsResponder, NameTable, NamedPeerServices, ResolverPacket};
use super::resolver_config::{ETC_HOSTS, HostResolver, HostResolverMode, HostsFile};
use crate::attach::verify::{Expected, verify_entry};
use crate::attach::{ATTACHMENTS_FILE, AttachTarget, Attachment, AttachmentNames, Attachments};
use crate::core::address::{NetworkId, NodePrefix};
use crate::core::api::Ipv4Route;
use crate::core::identity::AgentId;
use crate::core::node::Node;
use crate::core::trust::store::{TrustState, TrustStore};
use crate::state::StateDir;

/// Resolver replies waiting for the TUN; more are dropped (a query flood
/// must not grow memory).
const MAX_QUEUED_REPLIES: usize = 256;

/// One trust store entry as last published: `(id, name, state, IPv4)`.
type AppliedEntry = (AgentId, String, TrustState, Option<Ipv4Addr>);

/// The IPv4 address `node` routes to `id`, if any: `None` when IPv4 is off
/// or another agent keeps the address (a collision), so the name gets no A
/// record.
pub(crate) fn routed_ipv4(node: &Node, id: &AgentId) -> Option<Ipv4Addr> {
    match node.peer_ipv4_route(id)? {
        Ipv4Route::Routed(address) => Some(address),
        Ipv4Route::Off | Ipv4Route::TakenBy(_) => None,
    }
}

/// What the trusted peers of `trust` advertised to `node`, each under its
/// name in `trust`; requested-only and unknown peers are left out.
fn trusted_peer_services(trust: &TrustStore, node: &Node, now: Instant) -> Vec<NamedPeerServices> {
    let trusted: HashMap<&AgentId, &str> = trust
        .peers
        .iter()
        .filter(|entry| entry.state == TrustState::Trusted)
        .map(|entry| (&entry.id, entry.name.as_str()))
        .collect();
    node.peer_services(now)
        .into_iter()
        .filter_map(|peer| {
            let name = trusted.get(&peer.id)?;
            Some(NamedPeerServices {
                name: (*name).to_string(),
                services: peer.learned.services,
            })
        })
        .collect()
}

/// The names of one attached namespace.
#[derive(Debug)]
struct AttachedNames {
    attachment: Attachment,
    /// Where its names go, or why they cannot.
    hosts: Result<HostsFile, String>,
}

/// Shortest time between two rebuilds of the DNS-SD records for what peers
/// advertised (see the module docs).
pub(crate) const SERVICES_REBUILD_INTERVAL: Duration = Duration::from_millis(250);

/// When the responder gets what peers advertised again: once the node's
/// count of changes moved, at most once per [`SERVICES_REBUILD_INTERVAL`],
/// and at once after the names changed.
#[derive(Debug, Default)]
struct ServicesPacer {
    /// The node's count of service changes when the responder last got
    /// the services (`None`: never, or the names changed since).
    applied: Option<u64>,
    /// When the responder last got them.
    rebuilt_at: Option<Instant>,
}

impl ServicesPacer {
    /// Whether the services are to be rebuilt at `now`, with the node's
    /// count at `changes`; if so, that is recorded as done.
    fn rebuild_now(&mut self, now: Instant, changes: u64) -> bool {
        if self.applied == Some(changes) {
            return false;
        }
        let paced = self.applied.is_some()
            && self
                .rebuilt_at
                .is_some_and(|at| now < at + SERVICES_REBUILD_INTERVAL);
        if paced {
            return false;
        }
        self.applied = Some(changes);
        self.rebuilt_at = Some(now);
        true
    }

    /// When a rebuild that waits is due (`None`: none waits).
    fn deadline(&self, changes: u64) -> Option<Instant> {
        if self.applied == Some(changes) {
            return None;
        }
        self.rebuilt_at.map(|at| at + SERVICES_REBUILD_INTERVAL)
    }

    /// Services go by name: after a change of the names they are rebuilt
    /// at the next call.
    fn names_changed(&mut self) {
        self.applied = None;
    }
}

/// Names for trusted peers: responder, host resolver, attached namespaces.
#[derive(Debug)]
pub(crate) struct NameService {
    network: NetworkId,
    /// This agent's node prefix: attachments are checked against it.
    prefix: NodePrefix,
    owner: String,
    state: StateDir,
    responder: DnsResponder,
    host: Option<HostResolver>,
    attached: Vec<AttachedNames>,
    /// The trust store's `(id, name, state)` and each peer's routed IPv4
    /// address, as last applied.
    applied: Option<Vec<AppliedEntry>>,
    /// Whether names were published at least once.
    published: bool,
    /// When the responder gets the services again.
    services: ServicesPacer,
    replies: VecDeque<Vec<u8>>,
}

impl NameService {
    /// Sets up the host resolver for `mode` (a failure leaves only the
    /// responder, with a warning) and reads the attachments. Names are
    /// published by the first [`NameService::sync`].
    pub(crate) fn start(
        network: NetworkId,
        owner: AgentId,
        interface: &str,
        state: StateDir,
        mode: HostResolverMode,
    ) -> Self {
        let prefix = NodePrefix::of_agent(network, &owner);
        let responder = DnsResponder::new(network, prefix);
        let owner = owner.to_string();
        let host = match HostResolver::configure(mode, &owner, interface, responder.address()) {
            Ok(host) => host,
            Err(error) => {
                tracing::warn!(%error, "names: cannot configure the host resolver; only the responder answers");
                None
            }
        };
        tracing::info!(
            resolver = %responder.address(),
            host = %host.as_ref().map_or_else(|| "off".to_string(), HostResolver::describe),
            "names: NAME.agent.internal for trusted peers"
        );
        let mut service = Self {
            network,
            prefix,
            owner,
            state,
            responder,
            host,
            attached: Vec::new(),
            applied: None,
            published: false,
            services: ServicesPacer::default(),
            replies: VecDeque::new(),
        };
        // A failure is logged; attached namespaces then get names after the next reload.
        let _ = service.load_attachments(nix::unistd::geteuid().is_root());
        service.mark_unwritable_attachments();
        service
    }

    /// Answers a TUN packet addressed to the resolver (the reply is queued
    /// for [`NameService::poll_tun_packet`]). Returns `false` for packets
    /// that are not the resolver's: those belong to the node.
    pub(crate) fn handle_tun_packet(&mut self, packet: &[u8]) -> bool {
        match self.responder.handle_tun_packet(packet) {
            ResolverPacket::NotForResolver => false,
            ResolverPacket::Dropped => true,
            ResolverPacket::Reply(reply) => {
                if self.replies.len() < MAX_QUEUED_REPLIES {
                    self.replies.push_back(reply);
                }
                true
            }
        }
    }

    /// The next resolver reply to write to the TUN.
    pub(crate) fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.replies.pop_front()
    }

    /// Opens the hosts files the names go to (the host's, those of
    /// namespaces attached by name) and keeps the descriptors: edits in
    /// place then keep working after the daemon dropped its privileges.
    /// Namespaces attached later or by PID need root; their programs can
    /// use the resolver at `PREFIX::53`.
    pub(crate) fn hold_files(&mut self) {
        if let Some(HostResolver::Hosts(file)) = &mut self.host
            && let Err(error) = file.hold_open()
        {
            tracing::warn!(%error, "names: cannot keep the hosts file open; names will not be updated there");
        }
        for attached in &mut self.attached {
            // Not a container's file (by PID): an open file would pin its
            // root file system, and once unprivileged the daemon can no
            // longer check that the PID is still that container.
            if let Ok(file) = &mut attached.hosts
                && matches!(attached.attachment.target, AttachTarget::Netns(_))
                && attached.attachment.namespace_is_current()
                && let Err(error) = file.hold_open()
            {
                tracing::warn!(%error, target = %attached.attachment.target, "names: cannot keep an attached namespace's hosts file open");
            }
        }
    }

    /// Without root, a hosts file not held open since before the privilege
    /// drop cannot be written (`/etc/netns`, `/proc/PID/root` are root's):
    /// say so in the attachment's note instead of failing at every update.
    fn mark_unwritable_attachments(&mut self) {
        if nix::unistd::geteuid().is_root() {
            return;
        }
        let resolver = self.responder.address();
        for attached in &mut self.attached {
            if let Ok(file) = &attached.hosts
                && !file.is_held()
            {
                attached.hosts = Err(format!(
                    "the daemon runs unprivileged and cannot write {}; programs there can ask \
                     the resolver at {resolver}",
                    file.path().display()
                ));
            }
        }
    }

    /// Whether the host's resolver is systemd-resolved.
    pub(crate) fn uses_resolved(&self) -> bool {
        matches!(self.host, Some(HostResolver::Resolved { .. }))
    }

    /// The trusted names as last published.
    pub(crate) fn table(&self) -> &NameTable {
        self.responder.names()
    }

    /// Publishes the trusted names of `trust`, with the IPv4 addresses
    /// `node` routes to them, if they changed since the last call; then
    /// the services of the peers so named.
    pub(crate) fn sync(&mut self, now: Instant, trust: &TrustStore, node: &Node) {
        self.sync_names(trust, node);
        self.sync_services(now, trust, node);
    }

    /// Hands the responder what trusted peers advertised, if it changed
    /// since the last call (O(1) when it did not).
    /// What peers advertised waits while the last rebuild is younger than
    /// [`SERVICES_REBUILD_INTERVAL`]; a change of the names (this agent's
    /// own doing) does not.
    pub(crate) fn sync_services(&mut self, now: Instant, trust: &TrustStore, node: &Node) {
        if !self
            .services
            .rebuild_now(now, node.learned_services_changes())
        {
            return;
        }
        self.responder
            .set_services(trusted_peer_services(trust, node, now));
    }

    /// When [`NameService::sync_services`] will apply what peers advertised
    /// since its last call, if that waits.
    pub(crate) fn services_deadline(&self, node: &Node) -> Option<Instant> {
        self.services.deadline(node.learned_services_changes())
    }

    fn sync_names(&mut self, trust: &TrustStore, node: &Node) {
        let routed = |id: &AgentId| routed_ipv4(node, id);
        let unchanged = self.applied.as_ref().is_some_and(|applied| {
            applied.len() == trust.peers.len()
                && applied
                    .iter()
                    .zip(&trust.peers)
                    .all(|((id, name, state, address4), entry)| {
                        *id == entry.id
                            && *name == entry.name
                            && *state == entry.state
                            && *address4 == routed(&entry.id)
                    })
        });
        if unchanged {
            return;
        }
        self.applied = Some(
            trust
                .peers
                .iter()
                .map(|entry| (entry.id, entry.name.clone(), entry.state, routed(&entry.id)))
                .collect(),
        );
        let names = NameTable::from_trust_with_ipv4(trust, self.network, routed);
        // The first sync always writes, even no names: that removes a block
        // a killed daemon of this agent left behind.
        if self.published && self.responder.names() == &names {
            return;
        }
        tracing::debug!(names = names.len(), "names: publishing");
        self.responder.set_names(names);
        // Services go by name: join them with the new names.
        self.services.names_changed();
        self.publish_all();
        self.published = true;
    }

    fn publish_all(&self) {
        let names = self.responder.names();
        if let Some(host) = &self.host
            && let Err(error) = host.update(names)
        {
            tracing::warn!(%error, "names: cannot update the host resolver");
        }
        for attached in &self.attached {
            publish_attached(attached, names);
        }
    }

    /// Re-reads `attachments.json` (after `attach` or `detach`): removes the
    /// names of namespaces no longer attached, publishes them in new ones.
    /// Returns where each attachment's names go.
    pub(crate) fn reload_attachments(&mut self) -> Result<Vec<AttachmentNames>, String> {
        let before: Vec<AttachedNames> = std::mem::take(&mut self.attached);
        let loaded = self.load_attachments(false);
        // Files held open across a privilege drop stay held.
        for now in &mut self.attached {
            if let (Ok(file), Some(Ok(old))) = (
                &mut now.hosts,
                before
                    .iter()
                    .find(|old| old.attachment == now.attachment)
                    .map(|old| &old.hosts),
            ) {
                file.keep_held_from(old);
            }
        }
        self.mark_unwritable_attachments();
        for old in before {
            let still = self
                .attached
                .iter()
                .any(|now| now.attachment == old.attachment);
            if !still
                && let Ok(file) = &old.hosts
                && old.attachment.namespace_is_current()
                && let Err(error) = file.remove()
            {
                tracing::warn!(%error, target = %old.attachment.target, "names: cannot remove from the detached namespace");
            }
        }
        for attached in &self.attached {
            publish_attached(attached, self.responder.names());
        }
        loaded.map(|()| self.attachment_names())
    }

    /// Where each attachment's names go.
    pub(crate) fn attachment_names(&self) -> Vec<AttachmentNames> {
        self.attached
            .iter()
            .map(|attached| AttachmentNames {
                target: attached.attachment.target.clone(),
                address: attached.attachment.address,
                hosts_file: attached.hosts.as_ref().ok().map(|f| f.path().to_path_buf()),
                note: attached.hosts.as_ref().err().cloned(),
            })
            .collect()
    }

    /// Reads the record; with `verify` (at start-up, as root with every
    /// capability) each entry is checked first ([`attachment_verified`]).
    fn load_attachments(&mut self, verify: bool) -> Result<(), String> {
        let record = match Attachments::load(&self.state) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, "names: cannot read the attachments");
                return Err(error.to_string());
            }
        };
        let own = match &self.host {
            Some(HostResolver::Hosts(file)) => Some(file.path().to_path_buf()),
            _ => None,
        };
        // The daemon's user can rewrite the record: at start-up, as root,
        // an entry gets a hosts file only once the kernel shows its veth
        // in that namespace, as `attach` made it. A reload follows
        // `attach`, which checked the entries; and a daemon that switched
        // users can open no namespace's file but those it held since
        // start-up (one that stays root has a record only root writes).
        let expected = Expected {
            file: self.state.root().join(ATTACHMENTS_FILE),
            prefix: self.prefix,
            daemon_tun: None,
        };
        self.attached = record
            .attached
            .into_iter()
            .enumerate()
            .filter(|(index, attachment)| {
                !verify || attachment_verified(&expected, *index, attachment)
            })
            .map(|(_, attachment)| {
                let hosts = attachment_hosts(
                    &attachment,
                    &self.owner,
                    own.as_deref(),
                    self.responder.address(),
                );
                AttachedNames { attachment, hosts }
            })
            .collect();
        Ok(())
    }

    /// Removes every name this daemon published. Idempotent.
    pub(crate) fn shutdown(&mut self) {
        for attached in std::mem::take(&mut self.attached) {
            if let Ok(file) = &attached.hosts
                && attached.attachment.namespace_is_current()
                && let Err(error) = file.remove()
            {
                tracing::warn!(%error, "names: cannot remove from an attached namespace");
            }
        }
        if let Some(host) = self.host.take()
            && let Err(error) = host.remove()
        {
            tracing::warn!(%error, "names: cannot undo the host resolver configuration");
        }
    }
}

impl Drop for NameService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn publish_attached(attached: &AttachedNames, names: &NameTable) {
    let Ok(file) = &attached.hosts else {
        return;
    };
    // A PID may have been reused by now: write only into the namespace
    // that was attached.
    if !attached.attachment.namespace_is_current() {
        tracing::debug!(target = %attached.attachment.target, "names: attached namespace is gone");
        return;
    }
    if let Err(error) = file.write(names) {
        tracing::warn!(%error, target = %attached.attachment.target, "names: cannot update an attached namespace");
    }
}

/// Whether entry `index` of the record is an attachment `attach` made
/// and that still exists ([`verify_entry`]); a warning says why not.
fn attachment_verified(expected: &Expected, index: usize, attachment: &Attachment) -> bool {
    match verify_entry(expected, index, attachment) {
        Ok(true) => true,
        Ok(false) => {
            tracing::info!(target = %attachment.target, interface = %attachment.host_interface, "names: the attachment's veth is gone; no names there");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "names: attachment left out");
            false
        }
    }
}

/// Where the names of an attached namespace go: `/etc/netns/NAME/hosts`
/// for a named namespace (read by `ip netns exec`), the container's own
/// `/etc/hosts` for one attached by PID — unless that is this host's file.
fn attachment_hosts(
    attachment: &Attachment,
    owner: &str,
    own: Option<&Path>,
    resolver: Ipv6Addr,
) -> Result<HostsFile, String> {
    match &attachment.target {
        AttachTarget::Netns(name) => {
            HostsFile::for_named_netns(name, owner).map_err(|e| e.to_string())
        }
        AttachTarget::Pid(pid) => {
            let path = PathBuf::from(format!("/proc/{pid}/root{ETC_HOSTS}"));
            if !path.exists() {
                return Err(format!("{} does not exist", path.display()));
            }
            let file = HostsFile::in_container(path, owner);
            let shared = [Path::new(ETC_HOSTS), Path::new("/proc/1/root/etc/hosts")]
                .into_iter()
                .chain(own)
                .any(|other| file.same_file_as(other));
            if shared {
                return Err(format!(
                    "it shares this host's /etc/hosts; its programs can ask the resolver at {resolver}"
                ));
            }
            Ok(file)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::address::agent_address4;
    use crate::core::address::test_keys::colliding_identities;
    use crate::core::api::{NodeConfig, PeerConfig};
    use crate::core::identity::Identity;
    use crate::core::policy::Policy;
    use crate::core::trust::store::TrustEntry;

    fn network() -> NetworkId {
        NetworkId::from_name("agentnet")
    }

    fn trusted(identity: &Identity, name: &str) -> TrustEntry {
        TrustEntry {
            id: identity.agent_id(),
            name: name.into(),
            endpoint: None,
            allow: Default::default(),
            state: TrustState::Trusted,
            added_unix: 0,
            expires_unix: None,
        }
    }

    /// A node (its own key `me`) that trusted the entries of `store` in order.
    fn node_trusting(me: &Identity, store: &TrustStore) -> Node {
        let now = Instant::now();
        let config = NodeConfig {
            identity: me.clone(),
            network: network(),
            name: "me".into(),
            tunnel_mtu: 1408,
        };
        let mut node = Node::new(config, [7; 32], now, Duration::from_secs(1_700_000_000));
        for entry in &store.peers {
            node.upsert_peer(
                now,
                PeerConfig {
                    id: entry.id,
                    name: entry.name.clone(),
                    endpoint: None,
                    allow: Policy::All,
                },
            );
        }
        node
    }

    fn table(store: &TrustStore, node: &Node) -> NameTable {
        NameTable::from_trust_with_ipv4(store, network(), |id| routed_ipv4(node, id))
    }

    #[test]
    fn a_peer_whose_ipv4_address_collides_gets_aaaa_only() {
        let (me, first, second) = colliding_identities(network());
        let store = TrustStore {
            peers: vec![trusted(&first, "first"), trusted(&second, "second")],
        };
        let mut node = node_trusting(&me, &store);
        let names = table(&store, &node);
        let shared = agent_address4(network(), &first.agent_id());
        assert_eq!(
            names.lookup4("first"),
            Some(shared),
            "trusted first keeps it"
        );
        assert_eq!(names.lookup4("second"), None, "the later one gets no A");
        let second6 = NodePrefix::of_agent(network(), &second.agent_id()).agent_address();
        assert_eq!(names.lookup("second"), Some(second6), "AAAA stays");
        let hosts: Vec<_> = names.host_entries().map(|(a, _)| a).collect();
        assert_eq!(hosts.len(), 3, "two lines for first, one for second");

        // IPv4 off: no name has an A record.
        node.set_ipv4(false);
        let names = table(&store, &node);
        assert_eq!(names.entries4().count(), 0);
        assert_eq!(names.entries().count(), 2);
    }

    #[test]
    fn a_peer_sharing_this_agents_ipv4_address_gets_aaaa_only() {
        let (_, me, twin) = colliding_identities(network());
        let store = TrustStore {
            peers: vec![trusted(&twin, "twin")],
        };
        let node = node_trusting(&me, &store);
        let names = table(&store, &node);
        assert_eq!(names.lookup4("twin"), None);
        assert!(names.lookup("twin").is_some());
    }

    #[test]
    fn what_peers_advertised_is_applied_at_most_once_per_interval() {
        let start = Instant::now();
        let mut pacer = ServicesPacer::default();
        assert!(pacer.rebuild_now(start, 0), "the first time");
        assert!(!pacer.rebuild_now(start, 0), "nothing changed");
        assert_eq!(pacer.deadline(0), None);
        // A peer moves the count in every datagram: one rebuild per interval.
        let rebuilds = (1..=1_000u64)
            .filter(|i| pacer.rebuild_now(start + Duration::from_millis(*i), *i))
            .count();
        assert_eq!(rebuilds, 4, "at 250, 500, 750 and 1000 ms");
        // The last change waits: the loop wakes for it.
        let waiting = pacer.deadline(1_001).expect("a rebuild waits");
        assert_eq!(waiting, start + Duration::from_millis(1_250));
        assert!(!pacer.rebuild_now(waiting - Duration::from_millis(1), 1_001));
        assert!(pacer.rebuild_now(waiting, 1_001));
        assert_eq!(pacer.deadline(1_001), None);
        // New names: the services are joined with them at once.
        pacer.names_changed();
        assert!(pacer.rebuild_now(waiting + Duration::from_millis(1), 1_001));
    }

    #[test]
    fn an_unknown_agent_has_no_ipv4_route() {
        let (me, stranger, _) = colliding_identities(network());
        let node = node_trusting(&me, &TrustStore::default());
        assert_eq!(routed_ipv4(&node, &stranger.agent_id()), None);
    }
}
