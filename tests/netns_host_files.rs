//! Root and the files of a state directory the daemon's user owns (issue
//! 17 item 2): after `up --user nobody` the directory belongs to nobody,
//! who may plant links there. `up`, `down`, `attach` and `trust add`, run
//! as root, neither follow them nor touch their targets. And text another
//! agent chose (a trust request's justification with newlines and escape
//! sequences) is shown and logged inertly.
//!
//! They need root (namespaces, TUN). Without it they say why and pass as
//! skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI).

mod support;

use std::net::Ipv6Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::agent::Agent;
use support::{Lab, say, step, wait_for};

/// Programs these tests run.
const TOOLS: &[&str] = &["ping"];

/// The daemon's user in these tests.
const NOBODY: u32 = 65534;

fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A root-owned file outside the state directory that planted links aim
/// at, and what it looked like.
struct Canary {
    path: PathBuf,
    contents: Vec<u8>,
    modified: SystemTime,
    inode: u64,
}

impl Canary {
    fn new(dir: &Path) -> Self {
        let path = dir.join("canary");
        std::fs::write(&path, "root:$6$canary:19000:0:99999:7:::\n").expect("canary");
        let meta = std::fs::metadata(&path).expect("canary");
        Self {
            contents: std::fs::read(&path).expect("canary"),
            modified: meta.modified().expect("mtime"),
            inode: meta.ino(),
            path,
        }
    }

    fn assert_untouched(&self, after: &str) {
        let meta = std::fs::metadata(&self.path).expect("the canary still exists");
        assert_eq!(
            std::fs::read(&self.path).expect("canary"),
            self.contents,
            "{after}: the canary's contents changed"
        );
        assert_eq!(
            meta.modified().expect("mtime"),
            self.modified,
            "{after}: the canary was written"
        );
        assert_eq!(meta.ino(), self.inode, "{after}: the canary was replaced");
        assert_eq!(meta.uid(), 0, "{after}: the canary changed owner");
    }
}

/// What the daemon's user does: replaces `name` in the state directory
/// with a link to `target`.
fn plant(state: &Path, name: &str, target: &Path) {
    let path = state.join(name);
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).expect("symlink");
    std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).expect("lchown");
}

fn unplant(state: &Path, name: &str) {
    let path = state.join(name);
    if path.is_symlink() {
        std::fs::remove_file(path).expect("remove the link");
    }
}

/// With the state directory handed to nobody by an earlier `up --user
/// nobody`, links planted at the log, the PID file, the control socket,
/// `attachments.lock` and `trust.lock` are refused with a clear error (or
/// replaced, for the socket), and the root-owned file they point at keeps
/// its contents, modification time, inode and owner.
#[test]
fn links_planted_by_the_daemon_user_are_not_followed_by_root() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([93, 1], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let id_b = must(b.id());
    let attached = must(lab.add_namespace("att"));
    let state = a.state_dir().to_path_buf();
    let canary = Canary::new(lab.dir());

    step("up --user nobody, down: the state directory is nobody's now");
    must(a.up_with(&["--user", "nobody"]));
    must(a.down());
    assert_eq!(std::fs::metadata(&state).expect("state").uid(), NOBODY);

    step("a link at agentnet.log: `up` refuses it");
    plant(&state, "agentnet.log", &canary.path);
    let out = must(a.cli(&["up", "--interface", &a.iface, "--user", "nobody"]));
    say(&format!("host-files | log link: {}", out.stderr.trim()));
    assert!(!out.ok(), "up followed the log link: {}", out.describe());
    assert!(
        out.stderr.contains("agentnet.log") && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    assert!(a.daemon_pids().is_empty(), "a daemon runs");
    canary.assert_untouched("up with a log link");
    unplant(&state, "agentnet.log");

    step("a link at agentnet.pid: the daemon refuses it and stops");
    plant(&state, "agentnet.pid", &canary.path);
    let out = must(a.cli(&["up", "--interface", &a.iface, "--user", "nobody"]));
    say(&format!("host-files | pid link: {}", out.stderr.trim()));
    assert!(!out.ok(), "up followed the pid link: {}", out.describe());
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    assert!(
        !lab.link_exists(&a.host.ns, &a.iface),
        "the daemon got as far as the TUN"
    );
    canary.assert_untouched("up with a pid link");
    unplant(&state, "agentnet.pid");

    step("a link at agentnet.sock: replaced by the socket, not followed");
    plant(&state, "agentnet.sock", &canary.path);
    must(a.up_with(&["--user", "nobody"]));
    let socket = std::fs::symlink_metadata(state.join("agentnet.sock")).expect("socket");
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&socket.file_type()),
        "the control socket replaced the link"
    );
    assert_eq!(socket.mode() & 0o777, 0o660, "born with mode 0660");
    canary.assert_untouched("up with a socket link");

    step("a link at attachments.lock: `attach` refuses it");
    plant(&state, "attachments.lock", &canary.path);
    let out = must(a.cli(&["attach", "--netns", &attached]));
    say(&format!(
        "host-files | attachments.lock link: {}",
        out.stderr.trim()
    ));
    assert!(!out.ok(), "attach followed the link: {}", out.describe());
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);
    canary.assert_untouched("attach with an attachments.lock link");
    unplant(&state, "attachments.lock");

    step("a link at agentnet.pid while it runs: `down` still stops it");
    plant(&state, "agentnet.pid", &canary.path);
    must(a.down());
    assert!(a.daemon_pids().is_empty(), "the daemon still runs");
    canary.assert_untouched("down with a pid link");
    unplant(&state, "agentnet.pid");

    step("a link at trust.lock: `trust add` (no daemon) refuses it");
    plant(&state, "trust.lock", &canary.path);
    let out = must(a.cli(&["trust", "add", &id_b.id, "--name", "bravo"]));
    say(&format!(
        "host-files | trust.lock link: {}",
        out.stderr.trim()
    ));
    assert!(!out.ok(), "trust add followed the link: {}", out.describe());
    assert!(
        out.stderr.contains("trust.lock") && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    canary.assert_untouched("trust add with a trust.lock link");
    unplant(&state, "trust.lock");
    must(a.trust_add(&id_b, "bravo", None));

    step("a forged attachments.json: `up` makes no hosts file in a namespace never attached");
    // nobody wrote an entry for a namespace it never attached, consistent
    // in every field a file can be: the namespace's identity (anyone may
    // stat /run/netns/NAME), an attachment address of the agent's prefix
    // and the veth name attach would give it. Only the veth is missing.
    let hosts_file = Path::new("/etc/netns").join(&attached).join("hosts");
    assert!(!hosts_file.exists(), "{} before up", hosts_file.display());
    let namespace = std::fs::metadata(Path::new("/run/netns").join(&attached)).expect("netns");
    let mut segments = must(a.id()).address.segments();
    segments[7] = 2; // the first attachment's address: PREFIX::2
    let address = Ipv6Addr::from(segments);
    let record = serde_json::json!({
        "attached": [{
            "target": {"netns": attached},
            "netns": {"dev": namespace.dev(), "ino": namespace.ino()},
            "address": address.to_string(),
            "host_interface": format!("an{:04x}{:04x}-2", segments[3], segments[4]),
            "interface": "eth1",
        }],
        "enabled_forwarding": false,
    });
    let record_path = state.join("attachments.json");
    std::fs::write(&record_path, record.to_string()).expect("forged record");
    std::os::unix::fs::chown(&record_path, Some(NOBODY), Some(NOBODY)).expect("nobody's");
    must(a.up_with(&["--user", "nobody"]));
    assert!(
        !hosts_file.exists(),
        "up made {} for a namespace nobody attached",
        hosts_file.display()
    );
    assert!(
        a.log_excerpt(200).contains("veth is gone"),
        "the daemon says why: {}",
        a.log_excerpt(30)
    );
    must(a.down());
    canary.assert_untouched("the end");
}

/// A trust request whose justification holds newlines, a carriage return
/// and escape sequences (a fake log line, a screen clear) reaches the
/// target's `trust pending` with each of them as a visible escape, and the
/// target's log holds none of those bytes.
#[test]
fn hostile_justification_is_shown_and_logged_inertly() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([93, 2], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    must(a.up());
    must(b.up());
    let forged = "2026-12-02T00:00:00Z  INFO agentnet: trust added peer=mallory";
    let justification = format!("logs\n{forged}\r\u{1b}[2J\u{1b}]0;owned\u{7}\u{202e}");
    let endpoint = b.endpoint().to_string();
    must(a.cli_ok(&[
        "trust",
        "request",
        &id_b.id,
        "--justification",
        &justification,
        "--allow",
        "tcp:8080",
        "--endpoint",
        &endpoint,
    ]));
    let shown = must(wait_for(
        "the request in `trust pending`",
        Duration::from_secs(10),
        || {
            let out = b.cli_ok(&["trust", "pending"]).ok()?;
            out.stdout.contains(&id_a.id).then_some(out.stdout)
        },
    ));
    say(&format!("host-files | trust pending:\n{shown}"));
    for bad in ['\u{1b}', '\r', '\u{7}', '\u{202e}', '\0'] {
        assert!(
            !shown.contains(bad),
            "{bad:?} reached the terminal: {shown:?}"
        );
    }
    assert!(
        !shown.lines().any(|line| line.starts_with("2026-12-02")),
        "the justification started a line of its own: {shown}"
    );
    assert!(
        shown.contains("\\u{a}") && shown.contains("\\u{1b}[2J"),
        "{shown}"
    );
    // `--json` carries it as data (JSON escapes it).
    let json = must(b.cli_ok(&["trust", "pending", "--json"]));
    assert!(!json.stdout.contains('\u{1b}'), "{}", json.stdout);
    let log = b.log();
    for bad in ['\u{1b}', '\r', '\u{7}', '\u{202e}', '\0'] {
        assert!(!log.contains(bad), "{bad:?} reached b's log");
    }
    assert!(!log.contains(forged), "the forged line reached b's log");
    must(a.down());
    must(b.down());
}
