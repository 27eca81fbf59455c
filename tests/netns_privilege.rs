//! Least privilege on real hosts (issue 9): the daemon switches to an
//! unprivileged user after setting up and keeps working; it refuses a
//! world-writable state directory or key file and an unknown user; the
//! control socket lets a user who is neither root, the daemon's user nor in
//! the `agentnet` group read the status but not change trust (`SO_PEERCRED`).
//!
//! The unprivileged user is `nobody` (UID 65534), entered with `setpriv`.
//! They need root (namespaces, TUN). Without it they say why and pass as
//! skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::agent::{Agent, peer_in_status};
use support::natlab::overlay_ping;
use support::{Lab, say, wait_until};

/// Programs these tests run.
const TOOLS: &[&str] = &["ping", "setpriv", "getent"];

/// The unprivileged user of these tests.
const NOBODY: u32 = 65534;

fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// `setpriv` arguments that run the rest as `nobody` with no groups and no
/// capabilities.
fn as_nobody() -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// The `Name:\tvalue` fields of `/proc/PID/status`.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A started as root with `--user nobody`: after the start it runs as
/// nobody with no capabilities and no_new_privs, and still trusts peers
/// (writing its state), connects, publishes names, and stops cleanly.
#[test]
fn daemon_runs_as_the_given_user_without_capabilities_and_keeps_working() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([92, 1], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    must(a.up_with(&["--user", "nobody"]));
    must(b.up());
    let pid = must(a.daemon_pid());
    let uids = proc_status(pid, "Uid");
    let caps: Vec<String> = ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"]
        .iter()
        .map(|field| format!("{field} {}", proc_status(pid, field)))
        .collect();
    say(&format!(
        "privilege | daemon {pid}: Uid {uids}, Gid {}, {}, NoNewPrivs {}",
        proc_status(pid, "Gid"),
        caps.join(", "),
        proc_status(pid, "NoNewPrivs")
    ));
    assert_eq!(
        uids, "65534 65534 65534 65534",
        "real, effective, saved, fs UID"
    );
    for field in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(
            proc_status(pid, field),
            "0000000000000000",
            "{field}: no capability is left (names go to a hosts file here)"
        );
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert!(
        a.log().contains("dropped privileges"),
        "{}",
        a.log_excerpt(20)
    );

    // Trust changes after the switch: the daemon writes its state as nobody.
    must(a.trust_each_other_direct(&id_a, &b, &id_b));
    must(wait_until("a ping A -> B", Duration::from_secs(15), || {
        overlay_ping(&lab, &a, &id_b)
    }));
    let status = must(a.status());
    assert!(
        peer_in_status(&status, &id_b.id).is_some_and(|p| p["session_established"] == true),
        "{status}"
    );
    let trust = std::fs::read_to_string(a.state_dir().join("trust.toml")).expect("trust.toml");
    assert!(trust.contains(&id_b.id), "{trust}");
    // The user database was asked in a child process: no NSS module (such
    // as libnss_systemd, where `files` has no `agentnet` group) stays
    // loaded in the daemon after the start, a session and control requests.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let modules: Vec<&str> = maps.lines().filter(|l| l.contains("libnss_")).collect();
    assert!(modules.is_empty(), "NSS modules in the daemon: {modules:?}");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(a.state_dir().join("trust.toml")).expect("meta"),
    );
    assert_eq!(owner, NOBODY, "the state belongs to the daemon's user");
    // Names through the hosts file the daemon opened before the switch.
    let name = must(lab.exec_ok(&a.host.ns, &["getent", "hosts", "bravo.agent.internal"]));
    assert!(
        name.stdout.contains(&id_b.address.to_string()),
        "{}",
        name.stdout
    );

    must(a.down());
    assert!(!lab.link_exists(&a.host.ns, &a.iface), "the TUN is gone");
    for file in ["agentnet.sock", "agentnet.pid"] {
        assert!(!a.state_dir().join(file).exists(), "{file} removed at stop");
    }
    // Root runs it again in the same state directory.
    must(a.up_with(&["--user", "root"]));
    assert_eq!(proc_status(must(a.daemon_pid()), "Uid"), "0 0 0 0");
    must(a.down());
    must(b.down());
}

/// With the socket opened to everyone (`chmod 666`), `nobody` may read the
/// status and the trust list but not add trust, remove it or stop the
/// daemon: the daemon checks the peer's credentials.
#[test]
fn unprivileged_client_may_read_status_but_not_change_trust() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([92, 2], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let id_b = must(b.id());
    // A socket directory everyone may enter (the state directory is 0700).
    let public = tempfile::Builder::new()
        .prefix("an-ctl-")
        .tempdir()
        .expect("socket dir");
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = public.path().join("agentnet.sock");
    let socket_text = socket.to_str().expect("utf-8 path").to_string();
    must(a.up_with(&["--user", "root", "--socket", &socket_text]));
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "the control socket is 0660 by default");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");

    let nobody = as_nobody();
    let wrapper: Vec<&str> = nobody.iter().map(String::as_str).collect();
    let as_nobody = |args: &[&str]| {
        let mut full = vec!["--socket", socket_text.as_str()];
        full.extend_from_slice(args);
        must(a.cli_wrapped(&wrapper, &full))
    };
    let status = as_nobody(&["status", "--json"]);
    assert!(status.ok(), "status is read-only: {}", status.describe());
    assert!(status.stdout.contains("\"peers\""), "{}", status.stdout);
    let list = as_nobody(&["trust", "list"]);
    assert!(list.ok(), "trust list is read-only: {}", list.describe());

    let refused = as_nobody(&["trust", "add", &id_b.id, "--name", "sneaky"]);
    say(&format!("privilege | nobody: {}", refused.stderr.trim()));
    assert!(!refused.ok(), "nobody added trust: {}", refused.describe());
    assert!(
        refused.stderr.contains("permission denied"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("`trust_add`"), "{}", refused.stderr);
    assert!(refused.stderr.contains("uid 65534"), "{}", refused.stderr);
    for args in [&["trust", "remove", "bravo"][..], &["down"][..]] {
        let out = as_nobody(args);
        assert!(!out.ok(), "nobody ran {args:?}: {}", out.describe());
        assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    }
    let mut root_args = vec!["--socket", socket_text.as_str()];
    root_args.extend(["trust", "list", "--json"]);
    let listed = must(a.cli_ok(&root_args));
    assert!(
        !listed.stdout.contains(&id_b.id),
        "trust unchanged: {}",
        listed.stdout
    );
    // Root still may.
    let mut add = vec!["--socket", socket_text.as_str()];
    add.extend(["trust", "add", id_b.id.as_str(), "--name", "bravo"]);
    must(a.cli_ok(&add));
    let mut down = vec!["--socket", socket_text.as_str()];
    down.push("down");
    must(a.cli_ok(&down));
}

/// `up` refuses a world-writable state directory, a key file others can
/// write, and an unknown `--user`, before it creates anything.
#[test]
fn unsafe_state_permissions_and_unknown_users_are_refused_before_start() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let ns = must(lab.add_namespace("a"));
    let host = support::Host {
        role: "a".into(),
        ns,
        iface: "lo".into(),
        ip: std::net::Ipv4Addr::LOCALHOST,
    };
    let a = must(Agent::new(&lab, &host, "alpha"));
    must(a.init());
    let state = a.state_dir().to_path_buf();
    let refused = |what: &str, args: &[&str], expect: &[&str]| {
        let out = must(a.cli(args));
        say(&format!("privilege | {what}: {}", out.stderr.trim()));
        assert!(!out.ok(), "{what}: `up` started: {}", out.describe());
        for text in expect {
            assert!(out.stderr.contains(text), "{what}: {}", out.stderr);
        }
        assert!(
            !lab.link_exists(&host.ns, &a.iface),
            "{what}: a TUN was created"
        );
        assert!(a.daemon_pids().is_empty(), "{what}: a daemon runs");
    };
    let up = ["up", "--interface", a.iface.as_str()];
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };

    chmod(&state, 0o777);
    refused(
        "world-writable state directory",
        &up,
        &["writable by every user (mode 0777)", "chmod o-w"],
    );
    let mut foreground = up.to_vec();
    foreground.push("--foreground");
    refused(
        "world-writable state directory, --foreground",
        &foreground,
        &["writable by every user (mode 0777)"],
    );
    chmod(&state, 0o700);

    let key = state.join("identity.key");
    chmod(&key, 0o602);
    refused(
        "world-writable key file",
        &up,
        &["identity.key is writable by every user (mode 0602)"],
    );
    chmod(&key, 0o640);
    refused(
        "key file readable by the group",
        &up,
        &[
            "identity.key is readable by others (mode 0640)",
            "chmod 600",
        ],
    );
    chmod(&key, 0o600);

    let mut unknown = up.to_vec();
    unknown.extend(["--user", "no-such-agentnet-user"]);
    refused(
        "unknown --user",
        &unknown,
        &["unknown user `no-such-agentnet-user`"],
    );
}

/// The systemd unit's way: the daemon starts as an unprivileged user with
/// `CAP_NET_ADMIN` as its only (ambient) capability, creates the TUN with
/// it, and then gives it up (names go to a hosts file here, so nothing
/// needs it any more). `/dev/net/tun` is bound from a 0666 node, as udev
/// makes it on common distributions.
#[test]
fn daemon_started_unprivileged_with_net_admin_gives_it_up_after_setup() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([92, 4], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    must(a.init());
    let state = a.state_dir().to_path_buf();
    for path in [
        state.clone(),
        state.join("identity.key"),
        state.join("config.toml"),
    ] {
        std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let tun = lab.dir().join("tun");
    nix::sys::stat::mknod(
        &tun,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(10, 200),
    )
    .expect("mknod");
    std::fs::set_permissions(&tun, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // The lab directory is private to root: the node must be reachable.
    std::fs::set_permissions(lab.dir(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let script = format!(
        "mount --bind {} /dev/net/tun && exec setpriv --reuid={NOBODY} --regid={NOBODY} \
         --clear-groups --inh-caps=-all,+net_admin --ambient-caps=+net_admin \
         --bounding-set=-all,+net_admin \"$@\"",
        tun.display()
    );
    let wrapper = ["sh", "-c", script.as_str(), "sh"];
    let port = a.port.to_string();
    let out = must(a.cli_wrapped(&wrapper, &["up", "--interface", &a.iface, "--port", &port]));
    assert!(out.ok(), "{}\n{}", out.describe(), a.log_excerpt(20));
    let pid = must(a.daemon_pid());
    say(&format!(
        "privilege | started as nobody with CAP_NET_ADMIN: Uid {}, CapPrm {}, CapAmb {}, \
         CapBnd {}, NoNewPrivs {}",
        proc_status(pid, "Uid"),
        proc_status(pid, "CapPrm"),
        proc_status(pid, "CapAmb"),
        proc_status(pid, "CapBnd"),
        proc_status(pid, "NoNewPrivs")
    ));
    assert!(lab.link_exists(&a.host.ns, &a.iface), "the TUN exists");
    assert_eq!(proc_status(pid, "Uid"), "65534 65534 65534 65534");
    for field in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(proc_status(pid, field), "0000000000000000", "{field}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    must(a.down());
    assert!(!lab.link_exists(&a.host.ns, &a.iface), "the TUN is gone");
}

/// A namespace attached before the daemon starts (and switches to nobody)
/// keeps getting the trusted names, through the hosts file the daemon
/// opened as root; one attached after the switch is told that its names
/// are not managed (its programs can ask the resolver at PREFIX::53).
#[test]
fn attached_namespaces_keep_their_names_across_the_switch_or_are_told_why_not() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([92, 5], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let id_b = must(b.id());
    let early = must(lab.add_namespace("early"));
    let late = must(lab.add_namespace("late"));
    let early_hosts = std::path::Path::new("/etc/netns")
        .join(&early)
        .join("hosts");

    // Attached while a root daemon runs; then restarted as nobody.
    must(a.up_with(&["--user", "root"]));
    must(a.cli_ok(&["attach", "--netns", &early]));
    must(a.down());
    must(a.up_with(&["--user", "nobody"]));
    assert_eq!(
        proc_status(must(a.daemon_pid()), "Uid"),
        "65534 65534 65534 65534"
    );
    must(a.trust_add(&id_b, "bravo", None));
    must(wait_until(
        "bravo's name in the early namespace",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&early_hosts)
                .is_ok_and(|text| text.contains("bravo.agent.internal"))
        },
    ));
    let resolved = must(lab.exec_ok(&early, &["getent", "hosts", "bravo.agent.internal"]));
    assert!(
        resolved.stdout.contains(&id_b.address.to_string()),
        "{}",
        resolved.stdout
    );

    let out = must(a.cli_ok(&["attach", "--netns", &late]));
    say(&format!(
        "privilege | attach after the switch: {}",
        out.stdout.trim()
    ));
    assert!(
        out.stdout.contains("not managed") && out.stdout.contains("unprivileged"),
        "{}",
        out.stdout
    );
    must(a.cli_ok(&["detach", "--netns", &late]));
    must(a.cli_ok(&["detach", "--netns", &early]));
    must(a.down());
}

/// A daemon that stays root (`--user root`, or no `agentnet` user) keeps
/// only `CAP_NET_ADMIN` after the start: effective, permitted and bounding
/// sets hold nothing else, no_new_privs is set, and it still trusts peers
/// and connects (issue 17 item 16).
#[test]
fn daemon_that_stays_root_keeps_only_net_admin() {
    let Some(()) = support::netns_ready!(TOOLS, support::UserExists(NOBODY)) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([92, 6], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    must(a.up_with(&["--user", "root"]));
    must(b.up());
    let pid = must(a.daemon_pid());
    let caps: Vec<String> = ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"]
        .iter()
        .map(|field| format!("{field} {}", proc_status(pid, field)))
        .collect();
    say(&format!(
        "privilege | root daemon {pid}: Uid {}, {}, NoNewPrivs {}",
        proc_status(pid, "Uid"),
        caps.join(", "),
        proc_status(pid, "NoNewPrivs")
    ));
    assert_eq!(proc_status(pid, "Uid"), "0 0 0 0", "it stays root");
    // CAP_NET_ADMIN is capability 12.
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_status(pid, field),
            "0000000000001000",
            "{field}: only CAP_NET_ADMIN is kept"
        );
    }
    for field in ["CapInh", "CapAmb"] {
        assert_eq!(proc_status(pid, field), "0000000000000000", "{field}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    must(a.trust_each_other_direct(&id_a, &b, &id_b));
    must(wait_until("a ping A -> B", Duration::from_secs(15), || {
        overlay_ping(&lab, &a, &id_b)
    }));
    must(a.down());
    must(b.down());
}
