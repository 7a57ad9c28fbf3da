//! schemathesis (PyPI), the client-side tool that checks the controller's OpenAPI document
//! against the live server (controller/tests/openapi_schemathesis.rs): a pinned version in
//! its own venv under target/tools/schemathesis, made with Debian's python3. Does nothing
//! when that version is already there.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::sh::{probe, run_inherit, tools_dir};

/// The version the test expects (`PINNED` in controller/tests/openapi_schemathesis.rs).
pub const VERSION: &str = "4.32.5";

/// The venv.
pub fn venv() -> PathBuf {
    tools_dir().join("schemathesis")
}

/// Whether `st --version` prints `version` (`st, version 4.32.5`).
fn has_version(output: &str, version: &str) -> bool {
    output
        .split_whitespace()
        .last()
        .is_some_and(|v| v == version)
}

pub fn install() -> Result<()> {
    let venv = venv();
    let st = venv.join("bin/st");
    let (ok, out) = probe(Command::new(&st).arg("--version"));
    if ok && has_version(&out, VERSION) {
        println!("    schemathesis {VERSION}: installed ({})", st.display());
        return Ok(());
    }
    println!(
        "    schemathesis {VERSION}: installing into {}",
        venv.display()
    );
    if !venv.join("bin/pip").exists() {
        run_inherit(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
    }
    run_inherit(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={VERSION}")),
    )?;
    let (ok, out) = probe(Command::new(&st).arg("--version"));
    if !(ok && has_version(&out, VERSION)) {
        bail!(
            "{} was installed but `st --version` says {:?}",
            st.display(),
            out.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_line() {
        assert!(has_version("st, version 4.32.5\n", "4.32.5"));
        assert!(!has_version("st, version 4.32.50\n", "4.32.5"));
        assert!(!has_version("", "4.32.5"));
    }
}
