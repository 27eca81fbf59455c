//! `scripts/demo.sh`, the first command a new user runs, end to end: it
//! tells the whole story (trust request, approval, a server on its defaults
//! fetched by name through two NATs, revocation) and leaves nothing behind:
//! no namespace and no process of the demo survives it (the rendezvous
//! server once did: the demo killed a subshell, not the server).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TOOLS: &[&str] = &["nft", "curl", "python3"];
/// The demo builds a world of six namespaces and waits for hole punching.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn demo_tells_the_story_and_leaves_nothing_behind() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut demo = Command::new("bash");
    demo.arg(root.join("scripts/demo.sh"))
        .env("AGENTNET", support::agent::agentnet_bin());
    let out = support::run(demo, DEMO_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert!(out.ok(), "the demo failed:\n{}", support::tail(&text, 60));
    for expected in [
        "hello from bob, over agentnet",
        "Serving HTTP on 0.0.0.0 port 8080",
        "alice's request timed out: bob is invisible to her again",
    ] {
        assert!(
            text.contains(expected),
            "the demo's output lacks {expected:?}:\n{}",
            support::tail(&text, 60)
        );
    }
    // "removed namespaces NS... and WORK": every process the demo started
    // named WORK on its command line (state directories, the web root).
    let removed = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("removed namespaces "))
        .unwrap_or_else(|| panic!("no cleanup line:\n{}", support::tail(&text, 20)));
    let (namespaces, work) = removed
        .rsplit_once(" and ")
        .unwrap_or_else(|| panic!("cleanup line {removed:?}"));
    assert!(work.starts_with("/tmp/agentnet-demo."), "work dir {work:?}");
    assert!(!Path::new(work).exists(), "{work} is still there");
    let listed = support::run(
        {
            let mut ip = Command::new("ip");
            ip.args(["netns", "list"]);
            ip
        },
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for ns in namespaces.split_whitespace() {
        assert!(
            !listed
                .stdout
                .lines()
                .any(|line| line.split_whitespace().next() == Some(ns)),
            "namespace {ns} survived the demo"
        );
    }
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(work)
                .then(|| format!("{}: {cmdline}", entry.file_name().to_string_lossy()))
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "processes of the demo survived it:\n{}",
        survivors.join("\n")
    );
}
