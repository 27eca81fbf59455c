//! The `agentnet` command's behaviour as a shell script sees it: exit
//! status and messages of offline commands. No root, no network.

use std::fs::File;
use std::process::{Command, Stdio};

/// A state directory of its own, removed at the end.
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new(label: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("agentnet-cli-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn agentnet(state: &StateDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentnet"));
    command.arg("--state-dir").arg(&state.0);
    command
}

#[test]
fn output_that_cannot_be_written_fails_the_command() {
    let state = StateDir::new("full");
    let init = agentnet(&state)
        .args(["init", "--name", "alpha"])
        .output()
        .expect("runs");
    assert!(init.status.success(), "{init:?}");

    let Ok(full) = File::options().write(true).open("/dev/full") else {
        println!("skipped: no /dev/full to write to");
        return;
    };
    let id = agentnet(&state)
        .arg("id")
        .stdout(Stdio::from(full))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&id.stderr);
    assert_eq!(id.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the output to stdout"),
        "{stderr}"
    );

    // A reader that stopped reading is no failure (`agentnet id | head -0`).
    let mut closed = agentnet(&state)
        .arg("id")
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    drop(closed.stdout.take());
    let status = closed.wait().expect("waited");
    assert!(status.success(), "{status:?}");
}

#[test]
fn trust_revoke_help_names_the_command_typed() {
    let state = StateDir::new("revoke-help");
    for command in ["remove", "revoke"] {
        let help = agentnet(&state)
            .args(["trust", command, "--help"])
            .output()
            .expect("runs");
        assert!(help.status.success(), "{help:?}");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains(&format!("agentnet trust {command} <ID>")),
            "`trust {command} --help` shows its own usage:\n{text}"
        );
    }
}
