//! Running short-lived commands with their command line in every error.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` to completion; fails (with stderr) unless it exits with status 0.
/// Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail_hint(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its output whatever its status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null());
    cmd.output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Builds a command that runs `args` under coreutils `timeout` (SIGTERM after `limit`,
/// SIGKILL 5 s later), so a stuck client can never hang a test.
pub fn with_timeout(limit: Duration, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs().max(1)));
    c.args(args);
    c
}

fn tail_hint(stdout: &[u8]) -> String {
    let s = String::from_utf8_lossy(stdout);
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(" (stdout: {tail})")
    }
}
