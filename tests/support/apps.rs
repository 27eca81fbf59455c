//! The real applications of the namespace tests (`tests/apps/`): where
//! their scripts are, and the Python that can run them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::run;

/// The Python interpreter with `modules`: the repo's `.venv` (where
/// `scripts/test.sh` installs `scripts/requirements-test.txt`) or
/// `python3` on `PATH`.
pub fn python_with(modules: &[&str]) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let python = if venv.is_file() {
        venv
    } else {
        super::which("python3").ok_or("python3 is not installed")?
    };
    let import = format!("import {}", modules.join(", "));
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", &import]);
    let out = run(cmd, Duration::from_secs(60))?;
    if out.ok() {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import {modules:?} (scripts/test.sh installs scripts/requirements-test.txt into .venv): {}",
            python.display(),
            out.stderr.trim()
        ))
    }
}

/// A namespace test's [`Requirement`](super::Requirement): a Python with
/// these modules (found: the interpreter's path, see [`python_with`]).
pub struct Python(pub &'static [&'static str]);

impl super::Requirement for Python {
    type Found = PathBuf;
    fn check(&self) -> Result<PathBuf, String> {
        python_with(self.0)
    }
}

/// The directory of the apps' scripts.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A path as the `&str` an argument list needs.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
