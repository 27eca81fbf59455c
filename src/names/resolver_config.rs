//! Pointing the host's resolver at the names of `agent.internal`, for that
//! domain only, and undoing it.
//!
//! Three ways, chosen by [`HostResolverMode::Auto`] in this order:
//!
//! 1. The daemon runs in a named network namespace (`ip netns`) other than
//!    PID 1's: a managed block in `/etc/netns/NAME/hosts`, which
//!    `ip netns exec NAME` bind-mounts over `/etc/hosts` for the programs it
//!    starts. Several agents in several namespaces share `/etc` (as the
//!    tests do) without seeing each other's names, and one agent's `down`
//!    leaves the others' files alone. The file is created (from a copy of
//!    `/etc/hosts`) when missing and deleted with its last agentnet block.
//! 2. systemd-resolved serves this host's lookups: the TUN link gets the
//!    resolver address as its DNS server and `~agent.internal` as its only
//!    routing domain (`resolvectl dns/domain/default-route`), so only that
//!    domain goes to the daemon's responder, which answers AAAA and A
//!    itself. The link's settings go with the link.
//! 3. Otherwise: a managed block in `/etc/hosts`.
//!
//! A hosts block lists each trusted name with its IPv6 address and, when
//! IPv4 reaches that peer, its IPv4 address on a second line.
//!
//! A hosts block belongs to one agent (its ID is in the markers), so agents
//! sharing one file never touch each other's block. Files are edited in
//! place under an exclusive `flock`, never replaced: bind mounts (`ip netns
//! exec`, Docker's `/etc/hosts`) pin the inode, and a renamed file would
//! silently stop being the one programs read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{Flock, FlockArg};

use super::dns::{DOMAIN, NameTable};
use crate::sys::netns;
use crate::sys::programs::system_program;

/// The host's own hosts file.
pub const ETC_HOSTS: &str = "/etc/hosts";
/// Present while systemd-resolved runs (its varlink socket).
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";
/// The stub listener glibc talks to when `/etc/resolv.conf` points at resolved.
const RESOLVED_STUB: &str = "127.0.0.53";
/// First line of a hosts file agentnet created (and may delete).
const CREATED_MARKER: &str = "# agentnet: created for network namespace";

/// How `up` configures the host's resolver (`--names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostResolverMode {
    /// The first of: named namespace hosts file, systemd-resolved, /etc/hosts.
    #[default]
    Auto,
    /// systemd-resolved only.
    Resolved,
    /// A hosts file only (the namespace's own when in a named namespace).
    Hosts,
    /// Leave the host's resolver alone; only the responder at `PREFIX::53`.
    Off,
}

impl std::str::FromStr for HostResolverMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "resolved" => Ok(Self::Resolved),
            "hosts" => Ok(Self::Hosts),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown names mode `{other}` (auto, resolved, hosts or off)"
            )),
        }
    }
}

impl std::fmt::Display for HostResolverMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Resolved => "resolved",
            Self::Hosts => "hosts",
            Self::Off => "off",
        })
    }
}

/// Errors configuring the host's resolver.
#[derive(Debug, thiserror::Error)]
pub enum ResolverConfigError {
    /// A hosts file could not be read or written.
    #[error("{}: {source}", path.display())]
    Hosts {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `resolvectl` failed.
    #[error("resolvectl {args}: {message}")]
    Resolvectl {
        /// Its arguments.
        args: String,
        /// What it said, or why it did not run.
        message: String,
    },
    /// `--names resolved` was asked for, but resolved does not serve this host.
    #[error(
        "systemd-resolved does not serve lookups in this network namespace; use --names auto or hosts"
    )]
    ResolvedUnavailable,
}

/// Where this agent's names go.
#[derive(Debug)]
pub enum HostResolver {
    /// systemd-resolved routes `~agent.internal` on the TUN link to the responder.
    Resolved {
        /// The TUN interface.
        interface: String,
    },
    /// A managed block in a hosts file.
    Hosts(HostsFile),
}

impl HostResolver {
    /// Chooses and sets up the configuration for `mode` (`None` for
    /// [`HostResolverMode::Off`]). The resolved variant is configured here;
    /// hosts files are written by [`HostResolver::update`].
    pub fn configure(
        mode: HostResolverMode,
        owner: &str,
        interface: &str,
        resolver: std::net::Ipv6Addr,
    ) -> Result<Option<Self>, ResolverConfigError> {
        let named = || netns::current_named_netns();
        let hosts = |name: Option<String>| match name {
            Some(name) => HostsFile::for_named_netns(&name, owner),
            None => Ok(HostsFile::new(PathBuf::from(ETC_HOSTS), owner, false)),
        };
        match mode {
            HostResolverMode::Off => Ok(None),
            HostResolverMode::Hosts => hosts(named()).map(|file| Some(Self::Hosts(file))),
            HostResolverMode::Resolved => {
                if !resolved_serves_this_host() {
                    return Err(ResolverConfigError::ResolvedUnavailable);
                }
                configure_resolved(interface, resolver)?;
                Ok(Some(Self::Resolved {
                    interface: interface.to_string(),
                }))
            }
            HostResolverMode::Auto => {
                if let Some(name) = named() {
                    return hosts(Some(name)).map(|file| Some(Self::Hosts(file)));
                }
                if resolved_serves_this_host() {
                    match configure_resolved(interface, resolver) {
                        Ok(()) => {
                            return Ok(Some(Self::Resolved {
                                interface: interface.to_string(),
                            }));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot configure systemd-resolved; using {ETC_HOSTS}");
                        }
                    }
                }
                hosts(None).map(|file| Some(Self::Hosts(file)))
            }
        }
    }

    /// A short description for logs: `systemd-resolved on IFACE` or the file.
    pub fn describe(&self) -> String {
        match self {
            Self::Resolved { interface } => format!("systemd-resolved on {interface}"),
            Self::Hosts(file) => file.path().display().to_string(),
        }
    }

    /// Publishes a new set of names.
    pub fn update(&self, names: &NameTable) -> Result<(), ResolverConfigError> {
        match self {
            // resolved asks the responder; only its cache may be stale.
            Self::Resolved { .. } => resolvectl(&["flush-caches"]),
            Self::Hosts(file) => file.write(names),
        }
    }

    /// Undoes the configuration.
    pub fn remove(&self) -> Result<(), ResolverConfigError> {
        match self {
            Self::Resolved { interface } => resolvectl(&["revert", interface]),
            Self::Hosts(file) => file.remove(),
        }
    }
}

/// Whether systemd-resolved runs and glibc lookups in this namespace reach
/// it. resolved sees only the links of PID 1's network namespace.
fn resolved_serves_this_host() -> bool {
    if !Path::new(RESOLVED_SOCKET).exists() || !netns::in_init_netns() {
        return false;
    }
    let resolv_conf = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let uses_stub = resolv_conf
        .lines()
        .any(|line| line.split_whitespace().eq(["nameserver", RESOLVED_STUB]));
    let nsswitch = fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let uses_nss_resolve = nsswitch.lines().any(|line| {
        line.trim_start().starts_with("hosts:") && line.split_whitespace().any(|w| w == "resolve")
    });
    uses_stub || uses_nss_resolve
}

fn configure_resolved(
    interface: &str,
    resolver: std::net::Ipv6Addr,
) -> Result<(), ResolverConfigError> {
    let routing_domain = format!("~{DOMAIN}");
    resolvectl(&["dns", interface, &resolver.to_string()])?;
    resolvectl(&["domain", interface, &routing_domain])?;
    // Only the routing domain goes to this link, never the default route.
    resolvectl(&["default-route", interface, "false"])
}

fn resolvectl(args: &[&str]) -> Result<(), ResolverConfigError> {
    let error = |message: String| ResolverConfigError::Resolvectl {
        args: args.join(" "),
        message,
    };
    let output = system_program("resolvectl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| error(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(error(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// One agent's managed block in one hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    path: PathBuf,
    owner: String,
    /// Whether a missing file may be created (and deleted with its last
    /// agentnet block): only files under `/etc/netns/NAME/`.
    owns_file: bool,
    /// Whether the file lies in a tree someone else controls (a container's
    /// root through `/proc/PID/root`): then a symlink is never followed, or
    /// the container could aim our writes at any file of the host.
    untrusted_tree: bool,
    /// The file, opened before the daemon dropped its privileges
    /// ([`HostsFile::hold_open`]); edits go through it instead of the path.
    held: Option<HeldFile>,
}

/// An open hosts file kept by a [`HostsFile`]. Equality ignores it: two
/// `HostsFile`s are the same block of the same file, held or not.
#[derive(Debug, Clone)]
struct HeldFile(std::sync::Arc<File>);

impl PartialEq for HeldFile {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeldFile {}

impl HostsFile {
    /// The block of `owner` (an agent ID) in `path`.
    pub fn new(path: PathBuf, owner: &str, owns_file: bool) -> Self {
        Self {
            path,
            owner: owner.to_string(),
            owns_file,
            untrusted_tree: false,
            held: None,
        }
    }

    /// The block of `owner` in `path` inside a container's root: neither
    /// the file nor its directory may be a symlink, and it must be a
    /// regular file.
    pub fn in_container(path: PathBuf, owner: &str) -> Self {
        Self {
            untrusted_tree: true,
            ..Self::new(path, owner, false)
        }
    }

    /// The block of `owner` in `/etc/netns/NAME/hosts`.
    pub fn for_named_netns(name: &str, owner: &str) -> Result<Self, ResolverConfigError> {
        let dir = Path::new(netns::NETNS_ETC_DIR);
        if !netns::is_plain_name(name) {
            return Err(ResolverConfigError::Hosts {
                path: dir.join(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "bad namespace name"),
            });
        }
        Ok(Self::new(dir.join(name).join("hosts"), owner, true))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the same file as `other` (same device and inode),
    /// whatever the paths say.
    pub fn same_file_as(&self, other: &Path) -> bool {
        match (fs::metadata(&self.path), fs::metadata(other)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    fn error(&self, source: io::Error) -> ResolverConfigError {
        ResolverConfigError::Hosts {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the file now (creating it as [`HostsFile::write`] would, with
    /// the host's entries) and keeps the descriptor for every later edit, so
    /// that edits work after the daemon dropped its privileges. A file that
    /// does not exist and may not be created is not held.
    pub fn hold_open(&mut self) -> Result<(), ResolverConfigError> {
        let Some(mut file) = self.open(true).map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let text = read_all(&mut file).map_err(|e| self.error(e))?;
        if text.is_empty() && self.owns_file {
            overwrite(&mut file, &self.new_file_base()).map_err(|e| self.error(e))?;
        }
        let file = file
            .unlock()
            .map_err(|(_, errno)| self.error(io::Error::from(errno)))?;
        self.held = Some(HeldFile(std::sync::Arc::new(file)));
        Ok(())
    }

    /// Whether the file is held open ([`HostsFile::hold_open`]).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Takes over the descriptor `other` holds, if it is the same block.
    pub fn keep_held_from(&mut self, other: &HostsFile) {
        if self.held.is_none() && other.path == self.path && other.owner == self.owner {
            self.held.clone_from(&other.held);
        }
    }

    /// Makes the block list exactly `names` (removes it when there are none).
    pub fn write(&self, names: &NameTable) -> Result<(), ResolverConfigError> {
        if names.is_empty() {
            return self.remove();
        }
        let block = render_block(&self.owner, names);
        let Some(mut file) = self.open(true).map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let old = read_all(&mut file).map_err(|e| self.error(e))?;
        let base = if old.is_empty() && self.owns_file {
            self.new_file_base()
        } else {
            old.clone()
        };
        let new = replace_block(&base, &self.owner, Some(&block));
        if new != old {
            overwrite(&mut file, &new).map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Removes the block; deletes a file agentnet created once no agentnet
    /// block is left in it.
    pub fn remove(&self) -> Result<(), ResolverConfigError> {
        let Some(mut file) = self.open(false).map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let old = read_all(&mut file).map_err(|e| self.error(e))?;
        let new = replace_block(&old, &self.owner, None);
        if new != old {
            // In place first: a program that has this inode bind-mounted
            // must not keep seeing our names after the file is gone.
            overwrite(&mut file, &new).map_err(|e| self.error(e))?;
        }
        if self.owns_file && new.starts_with(CREATED_MARKER) && !has_any_block(&new) {
            match fs::remove_file(&self.path) {
                // Held open by a daemon that dropped its privileges: the
                // file stays, holding only the host's entries, for the next.
                Err(e) if self.held.is_some() && e.kind() == io::ErrorKind::PermissionDenied => {
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                result => result.map_err(|e| self.error(e))?,
            }
            if let Some(dir) = self.path.parent() {
                // Only if empty: the operator may keep other files there.
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// Opens the file locked; `None` if it does not exist and may not be
    /// created.
    fn open(&self, create: bool) -> io::Result<Option<Flock<File>>> {
        if let Some(HeldFile(held)) = &self.held {
            // A duplicate shares the open file description: the lock below
            // is taken on the held file, released when the duplicate goes.
            return lock_exclusive(held.try_clone()?).map(Some);
        }
        let create = create && self.owns_file;
        if create && let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut options = OpenOptions::new();
        options
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o644);
        if self.untrusted_tree {
            let dir_is_symlink = self
                .path
                .parent()
                .and_then(|dir| fs::symlink_metadata(dir).ok())
                .is_none_or(|meta| meta.file_type().is_symlink());
            if dir_is_symlink {
                return Err(io::Error::other("its directory is a symlink (or missing)"));
            }
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        let file = match options.open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        lock_exclusive(file).map(Some)
    }

    /// What a newly created namespace hosts file starts with: a marker and
    /// the host's `/etc/hosts` (it replaces that file for the namespace),
    /// without any agentnet block in it.
    fn new_file_base(&self) -> String {
        let namespace = self
            .path
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let host = fs::read_to_string(ETC_HOSTS).unwrap_or_else(|_| {
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string()
        });
        let mut base = format!(
            "{CREATED_MARKER} {namespace} from {ETC_HOSTS}; deleted with its last agentnet block\n"
        );
        base.push_str(&strip_all_agentnet(&host));
        base
    }
}

fn lock_exclusive(mut file: File) -> io::Result<Flock<File>> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(locked) => return Ok(locked),
            Err((returned, nix::errno::Errno::EINTR)) => file = returned,
            Err((_, errno)) => return Err(io::Error::from(errno)),
        }
    }
}

fn read_all(file: &mut File) -> io::Result<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(text)
}

fn overwrite(file: &mut File, text: &str) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    file.sync_data()
}

fn begin_marker(owner: &str) -> String {
    format!("# BEGIN agentnet {owner}")
}

fn end_marker(owner: &str) -> String {
    format!("# END agentnet {owner}")
}

/// The block of `owner` listing `names`: a line for each name's IPv6
/// address and, where IPv4 reaches it, one for its IPv4 address.
pub fn render_block(owner: &str, names: &NameTable) -> String {
    let mut block = format!(
        "{} (managed by agentnet: rewritten as trust changes, removed by `agentnet down`)\n",
        begin_marker(owner)
    );
    for (address, fqdn) in names.host_entries() {
        block.push_str(&format!("{address}\t{fqdn}\n"));
    }
    block.push_str(&end_marker(owner));
    block.push('\n');
    block
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// `text` without the block of `owner`, with `block` appended if given.
/// Everything else, other agents' blocks included, stays as it was.
pub fn replace_block(text: &str, owner: &str, block: Option<&str>) -> String {
    let (begin, end) = (begin_marker(owner), end_marker(owner));
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if inside {
            if is_marker(bare, &end) {
                inside = false;
                continue;
            }
            // A damaged block (no END): stop at the first line that is not
            // one of our name lines, so no foreign line is lost.
            if bare
                .split_whitespace()
                .nth(1)
                .is_some_and(|name| name.ends_with(&format!(".{DOMAIN}")))
            {
                continue;
            }
            inside = false;
        }
        if is_marker(bare, &begin) {
            inside = true;
            continue;
        }
        out.push_str(line);
    }
    if let Some(block) = block {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(block);
    }
    out
}

/// Whether any agentnet block is in `text`.
fn has_any_block(text: &str) -> bool {
    text.lines()
        .any(|line| line.starts_with("# BEGIN agentnet "))
}

/// `text` without any agentnet block or creation marker.
fn strip_all_agentnet(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut owner: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(current) = &owner {
            if is_marker(bare, &end_marker(current)) {
                owner = None;
            }
            continue;
        }
        if let Some(rest) = bare.strip_prefix("# BEGIN agentnet ") {
            owner = rest.split_whitespace().next().map(str::to_string);
            continue;
        }
        if bare.starts_with(CREATED_MARKER) {
            continue;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::address::NetworkId;
    use crate::core::identity::Identity;
    use crate::core::trust::store::{TrustEntry, TrustState, TrustStore};

    fn names(list: &[(u8, &str)]) -> NameTable {
        let store = TrustStore {
            peers: list
                .iter()
                .map(|(seed, name)| TrustEntry {
                    id: Identity::from_secret_bytes(&[*seed; 32])
                        .expect("key")
                        .agent_id(),
                    name: (*name).into(),
                    endpoint: None,
                    allow: Default::default(),
                    state: TrustState::Trusted,
                    added_unix: 0,
                    expires_unix: None,
                })
                .collect(),
        };
        NameTable::from_trust(&store, NetworkId::from_name("agentnet"))
    }

    const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost\n";

    #[test]
    fn block_is_appended_replaced_and_removed_leaving_the_rest() {
        let one = render_block("aaa", &names(&[(1, "bob")]));
        let with = replace_block(HOSTS, "aaa", Some(&one));
        assert!(with.starts_with(HOSTS));
        assert!(with.contains("\tbob.agent.internal\n"), "{with}");
        let two = render_block("aaa", &names(&[(1, "bob"), (2, "carol")]));
        let replaced = replace_block(&with, "aaa", Some(&two));
        assert_eq!(replaced.matches("# BEGIN agentnet aaa").count(), 1);
        assert!(replaced.contains("carol.agent.internal"));
        assert_eq!(replace_block(&replaced, "aaa", None), HOSTS);
    }

    #[test]
    fn block_lists_ipv6_and_routed_ipv4_lines_for_each_name() {
        let store = TrustStore {
            peers: [(1, "bob"), (2, "carol")]
                .iter()
                .map(|(seed, name)| TrustEntry {
                    id: Identity::from_secret_bytes(&[*seed; 32])
                        .expect("key")
                        .agent_id(),
                    name: (*name).into(),
                    endpoint: None,
                    allow: Default::default(),
                    state: TrustState::Trusted,
                    added_unix: 0,
                    expires_unix: None,
                })
                .collect(),
        };
        let network = NetworkId::from_name("agentnet");
        let bob = store.peers[0].id;
        let bob4 = std::net::Ipv4Addr::new(100, 64, 7, 9);
        // Carol has no IPv4 route (her address collides, or IPv4 is off).
        let table =
            NameTable::from_trust_with_ipv4(&store, network, |id| (*id == bob).then_some(bob4));
        let bob6 = table.lookup("bob").expect("bob");
        let carol6 = table.lookup("carol").expect("carol");
        let block = render_block("aaa", &table);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines[1..],
            [
                format!("{bob6}\tbob.agent.internal").as_str(),
                "100.64.7.9\tbob.agent.internal",
                format!("{carol6}\tcarol.agent.internal").as_str(),
                "# END agentnet aaa",
            ],
            "{block}"
        );
        // Both kinds of line go with the block.
        let text = replace_block(HOSTS, "aaa", Some(&block));
        assert_eq!(replace_block(&text, "aaa", None), HOSTS);
    }

    #[test]
    fn other_agents_blocks_are_never_touched() {
        let mine = render_block("aaa", &names(&[(1, "bob")]));
        let theirs = render_block("aaab", &names(&[(2, "bob")]));
        let text = replace_block(HOSTS, "aaab", Some(&theirs));
        let text = replace_block(&text, "aaa", Some(&mine));
        let without_mine = replace_block(&text, "aaa", None);
        assert_eq!(without_mine, format!("{HOSTS}{theirs}"));
    }

    #[test]
    fn a_damaged_block_loses_only_its_own_lines() {
        let damaged = format!(
            "{HOSTS}# BEGIN agentnet aaa\nfd00::1\tbob.agent.internal\n10.0.0.1\tprinter\n"
        );
        assert_eq!(
            replace_block(&damaged, "aaa", None),
            format!("{HOSTS}10.0.0.1\tprinter\n")
        );
    }

    #[test]
    fn a_file_without_final_newline_gets_one_before_the_block() {
        let block = render_block("aaa", &names(&[(1, "bob")]));
        let text = replace_block("127.0.0.1 localhost", "aaa", Some(&block));
        assert!(text.starts_with("127.0.0.1 localhost\n# BEGIN agentnet aaa "));
    }

    #[test]
    fn copies_of_hosts_drop_every_agentnet_part() {
        let block = render_block("aaa", &names(&[(1, "bob")]));
        let text = format!("{CREATED_MARKER} x from /etc/hosts\n{HOSTS}{block}");
        assert_eq!(strip_all_agentnet(&text), HOSTS);
    }

    #[test]
    fn a_held_file_is_edited_through_its_descriptor_wherever_its_path_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ns").join("hosts");
        let mut file = HostsFile::new(path.clone(), "aaa", true);
        file.hold_open().expect("hold");
        let base = fs::read_to_string(&path).expect("created at once");
        assert!(base.starts_with(CREATED_MARKER), "{base}");
        // The path no longer leads to the file (as if the daemon could not
        // open it any more): edits still reach it.
        let moved = dir.path().join("moved");
        fs::rename(&path, &moved).expect("move");
        file.write(&names(&[(1, "bob")])).expect("write");
        let text = fs::read_to_string(&moved).expect("read");
        assert!(text.contains("bob.agent.internal"), "{text}");
        let mut reloaded = HostsFile::new(path.clone(), "aaa", true);
        reloaded.keep_held_from(&file);
        reloaded.remove().expect("remove");
        let text = fs::read_to_string(&moved).expect("read");
        assert!(!text.contains("bob.agent.internal"), "{text}");
    }

    #[test]
    fn file_lifecycle_in_place_and_deleted_with_the_last_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ns").join("hosts");
        let a = HostsFile::new(path.clone(), "aaa", true);
        let b = HostsFile::new(path.clone(), "bbb", true);
        a.write(&names(&[(1, "bob")])).expect("write a");
        let inode = fs::metadata(&path).expect("created").ino();
        assert!(
            fs::read_to_string(&path)
                .expect("read")
                .starts_with(CREATED_MARKER)
        );
        b.write(&names(&[(2, "carol")])).expect("write b");
        a.write(&names(&[(1, "bob"), (3, "dave")]))
            .expect("rewrite a");
        assert_eq!(
            fs::metadata(&path).expect("exists").ino(),
            inode,
            "edited in place"
        );
        a.remove().expect("remove a");
        let text = fs::read_to_string(&path).expect("b's block keeps the file");
        assert!(text.contains("carol.agent.internal") && !text.contains("bob."));
        b.remove().expect("remove b");
        assert!(!path.exists(), "deleted with the last block");
        assert!(!path.parent().expect("dir").exists());
    }

    #[test]
    fn container_files_behind_symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("precious");
        fs::write(&target, "secret\n").expect("write");
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).expect("etc");
        std::os::unix::fs::symlink(&target, etc.join("hosts")).expect("symlink");
        let file = HostsFile::in_container(etc.join("hosts"), "aaa");
        assert!(file.write(&names(&[(1, "bob")])).is_err());
        let linked_dir = dir.path().join("etc2");
        std::os::unix::fs::symlink(&etc, &linked_dir).expect("symlink");
        let file = HostsFile::in_container(linked_dir.join("hosts"), "aaa");
        assert!(file.write(&names(&[(1, "bob")])).is_err());
        assert_eq!(fs::read_to_string(&target).expect("read"), "secret\n");
    }

    #[test]
    fn a_file_agentnet_did_not_create_is_never_created_or_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        let file = HostsFile::new(path.clone(), "aaa", false);
        file.write(&names(&[(1, "bob")])).expect("no-op");
        assert!(!path.exists());
        fs::write(&path, HOSTS).expect("write");
        file.write(&names(&[(1, "bob")])).expect("write");
        file.remove().expect("remove");
        assert_eq!(fs::read_to_string(&path).expect("kept"), HOSTS);
    }
}
