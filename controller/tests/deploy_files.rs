//! The deployment files in deploy/: the systemd units pass `systemd-analyze verify` (with
//! their binaries swapped for one that exists here), and both run their binary with the
//! settings file that deploy/config/ gives an example of.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn systemd_units_verify_clean() {
    let dir = std::env::temp_dir().join(format!("weft-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut units = Vec::new();
    for (unit, binary, config) in [
        (
            "weft-controller.service",
            "weft-controller",
            "/etc/weft/controller.toml",
        ),
        ("weft-agent.service", "weft-agent", "/etc/weft/agent.toml"),
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).expect(unit);
        let exec = format!("ExecStart=/usr/local/bin/{binary} --config {config}");
        assert!(
            text.lines().any(|l| l == exec),
            "{unit} runs {binary} with its settings file"
        );
        std::fs::write(
            dir.join(unit),
            text.replace(&format!("/usr/local/bin/{binary}"), "/bin/true"),
        )
        .expect("write");
        units.push(dir.join(unit));
    }
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
    {
        Ok(out) => out,
        Err(e) if !is_root() => {
            eprintln!("systemd-analyze not found ({e}); skipped");
            return;
        }
        Err(e) => panic!("systemd-analyze not found: {e}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "systemd-analyze verify: {report}"
    );
    // A bad setting is reported (the check can fail).
    let bad = dir.join("weft-bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&units[0])
            .unwrap()
            .replace("Restart=always", "Restart=sometimes"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()
        .expect("systemd-analyze");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sometimes"),
        "a bad setting is reported"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
