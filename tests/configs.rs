//! The example configurations in `configs/` and the service files in
//! `platform/` are loaded with the real parsers, so they cannot rot: a key
//! renamed in the code, a flag removed from the CLI or a typo in an example
//! fails here.
//!
//! - `configs/agent*.toml`: `StateDir::load_config` (name and network rules),
//!   `AutoApproveConfig::load` (the `[auto_approve]` table), every
//!   `rendezvous` entry as a `RendezvousSpec`;
//! - `configs/trust*.toml`: `StateDir::load_trust`, then every entry again
//!   through `TrustStore::upsert` (names valid and unique);
//! - `configs/rendezvous*.toml`: `StateDir::load_config`;
//! - every key of each file must be one the parsers read (serde ignores
//!   unknown keys, which would hide a renamed one);
//! - `platform/systemd/*.service`: the `ExecStart=` command line parses
//!   with the CLI (`agentnet ARGS --help`).
//!
//! No root, no network.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentnet::core::identity::Identity;
use agentnet::core::trust::store::TrustStore;
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::state::fleet::AutoApproveConfig;
use agentnet::state::StateDir;

/// Keys of `config.toml` and of its `[auto_approve]` table.
const CONFIG_KEYS: &[&str] = &[
    "name",
    "network",
    "rendezvous",
    "auto_approve",
    "trust_requests",
];
const AUTO_APPROVE_KEYS: &[&str] = &["agents", "fleet_keys"];
/// Keys of one `[[peer]]` of `trust.toml`.
const PEER_KEYS: &[&str] = &[
    "id",
    "name",
    "endpoint",
    "allow",
    "state",
    "added_unix",
    "expires_unix",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn files_in(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// A state directory holding `file` as `name`.
fn state_with(file: &Path, name: &str) -> (tempfile::TempDir, StateDir) {
    let temp = tempfile::tempdir().expect("temp dir");
    let state = StateDir::new(temp.path().join("state"));
    state.create().expect("state dir");
    fs::copy(file, state.root().join(name)).expect("copy");
    (temp, state)
}

fn table_keys(value: &toml::Value) -> Vec<String> {
    value
        .as_table()
        .map(|table| table.keys().cloned().collect())
        .unwrap_or_default()
}

fn assert_known(file: &Path, what: &str, keys: &[String], known: &[&str]) {
    for key in keys {
        assert!(
            known.contains(&key.as_str()),
            "{}: `{key}` is not a key agentnet reads in {what} (known: {known:?})",
            file.display()
        );
    }
}

fn check_agent_config(file: &Path) {
    let (_temp, state) = state_with(file, "config.toml");
    let config = state
        .load_config()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .expect("present");
    let auto =
        AutoApproveConfig::load(&state).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    for entry in &config.rendezvous {
        entry
            .parse::<RendezvousSpec>()
            .unwrap_or_else(|e| panic!("{}: rendezvous `{entry}`: {e}", file.display()));
    }
    let raw: toml::Value = toml::from_str(&fs::read_to_string(file).expect("read")).expect("toml");
    assert_known(file, "config.toml", &table_keys(&raw), CONFIG_KEYS);
    if let Some(table) = raw.get("auto_approve") {
        assert_known(
            file,
            "[auto_approve]",
            &table_keys(table),
            AUTO_APPROVE_KEYS,
        );
    }
    println!(
        "{}: agent `{}` in network `{}`, {} rendezvous, auto-approval {}",
        file.display(),
        config.name,
        config.network,
        config.rendezvous.len(),
        if auto.is_on() { "on" } else { "off" }
    );
}

fn check_trust_store(file: &Path) {
    let (_temp, state) = state_with(file, "trust.toml");
    let store = state
        .load_trust()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(!store.peers.is_empty(), "{}: no [[peer]]", file.display());
    // The rules `trust add` enforces: valid, unique names; not ourselves.
    let me = Identity::from_secret_bytes(&[0x5a; 32])
        .expect("key")
        .agent_id();
    let mut checked = TrustStore::default();
    for entry in &store.peers {
        assert!(
            checked.get(&entry.id).is_none(),
            "{}: {} listed twice",
            file.display(),
            entry.id
        );
        checked
            .upsert(&me, entry.clone())
            .unwrap_or_else(|e| panic!("{}: peer {}: {e}", file.display(), entry.name));
    }
    let raw: toml::Value = toml::from_str(&fs::read_to_string(file).expect("read")).expect("toml");
    assert_known(file, "trust.toml", &table_keys(&raw), &["peer"]);
    for peer in raw["peer"].as_array().expect("[[peer]] array") {
        assert_known(file, "[[peer]]", &table_keys(peer), PEER_KEYS);
    }
    println!("{}: {} peers", file.display(), store.peers.len());
}

fn check_rendezvous_config(file: &Path) {
    let (_temp, state) = state_with(file, "config.toml");
    let config = state
        .load_config()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .expect("present");
    let raw: toml::Value = toml::from_str(&fs::read_to_string(file).expect("read")).expect("toml");
    assert_known(
        file,
        "a rendezvous config.toml",
        &table_keys(&raw),
        &["name", "network"],
    );
    println!(
        "{}: rendezvous `{}` for `{}`",
        file.display(),
        config.name,
        config.network
    );
}

#[test]
fn every_example_config_loads_with_the_real_parsers() {
    let files = files_in("configs");
    assert!(files.len() >= 4, "configs/ is missing examples: {files:?}");
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match name {
            _ if name.ends_with(".md") => {}
            _ if name.starts_with("agent") && name.ends_with(".toml") => check_agent_config(file),
            _ if name.starts_with("trust") && name.ends_with(".toml") => check_trust_store(file),
            _ if name.starts_with("rendezvous") && name.ends_with(".toml") => {
                check_rendezvous_config(file)
            }
            _ => panic!(
                "{}: no parser is known for this example; teach tests/configs.rs to load it",
                file.display()
            ),
        }
    }
}

/// The `ExecStart=` of a unit, continuation lines joined, split into words.
fn exec_start(unit: &Path) -> Vec<String> {
    let text = fs::read_to_string(unit).expect("read unit");
    let mut command = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if !inside {
            match line.strip_prefix("ExecStart=") {
                Some(rest) => {
                    inside = true;
                    command.push_str(rest);
                }
                None => continue,
            }
        } else {
            command.push(' ');
            command.push_str(line);
        }
        match command.strip_suffix('\\') {
            Some(head) => command = head.to_string(),
            None => break,
        }
    }
    command.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_units_start_agentnet_with_arguments_it_accepts() {
    let units: Vec<PathBuf> = files_in("platform/systemd")
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "service"))
        .collect();
    assert!(units.len() >= 2, "agent and rendezvous units: {units:?}");
    for unit in units {
        let words = exec_start(&unit);
        let (program, args) = words
            .split_first()
            .unwrap_or_else(|| panic!("{}: no ExecStart=", unit.display()));
        assert!(
            program.ends_with("/agentnet"),
            "{}: runs {program}",
            unit.display()
        );
        assert!(
            args.iter().any(|a| a == "--foreground"),
            "{}: systemd needs --foreground",
            unit.display()
        );
        // clap stops at --help only after the arguments before it parsed.
        let out = Command::new(env!("CARGO_BIN_EXE_agentnet"))
            .args(args)
            .arg("--help")
            .output()
            .expect("run agentnet");
        assert!(
            out.status.success(),
            "{}: `agentnet {}` does not parse:\n{}",
            unit.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
