//! Node profiles: what an `image` runs, as data (a TOML table; the built-in one is
//! `profiles.toml`, documented there). The code knows only generic step kinds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::template;

/// The built-in table.
pub const BUILTIN: &str = include_str!("profiles.toml");

#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    #[error("profiles {origin}: line {line}, column {column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("profiles {origin}: line {line}: profile {profile:?}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        profile: String,
        message: String,
    },
    #[error("profiles {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A step run before every start (each is idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Make a directory (and its parents); chown it to `owner` and chmod it to `mode`.
    Mkdir {
        path: String,
        owner: Option<String>,
        mode: Option<u32>,
    },
    /// Chown a path to `owner` (and everything below it with `recursive`).
    Chown {
        path: String,
        owner: String,
        recursive: bool,
    },
    /// Run `argv` as the profile's user, in the node, if `creates` does not exist.
    RunOnce {
        argv: Vec<String>,
        creates: String,
        timeout: Duration,
    },
    /// Write a file from a template (only when missing with `if_missing`).
    Write {
        path: String,
        template: String,
        owner: Option<String>,
        mode: Option<u32>,
        if_missing: bool,
    },
}

/// How to tell the program is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// A TCP connect to `{port}` succeeds.
    Tcp,
    /// PostgreSQL accepts sessions (not while it recovers): [`crate::readiness`].
    Postgres,
    /// Redis answers `PING` (not `-LOADING`).
    Redis,
}

impl Ready {
    /// The probe's name, as in a profile.
    pub fn name(self) -> &'static str {
        match self {
            Ready::Tcp => "tcp",
            Ready::Postgres => "postgres",
            Ready::Redis => "redis",
        }
    }
}

/// One profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Image globs.
    pub images: Vec<String>,
    pub user: String,
    /// Default port when the node declares none.
    pub port: Option<u16>,
    pub command: Vec<String>,
    pub prepare: Vec<Step>,
    pub ready: Option<Ready>,
    pub ready_timeout: Duration,
    /// The signal `remove` sends first (SIGKILL follows after the grace).
    pub stop_signal: i32,
    /// Files removed from a volume made as a copy of another node's (a weave's clone, a
    /// volume sync) before the node starts, relative to the volume's root: state of the
    /// source's running process that the copy must not inherit (PostgreSQL's
    /// `postmaster.pid`).
    pub clone_remove: Vec<String>,
    /// Run (as `user`, inside the node) right before a snapshot of the node's volumes is
    /// taken for a weave, or a volume sync copies them: makes the server's on-disk state
    /// cheap to start from
    /// (PostgreSQL's `CHECKPOINT`: a clone then replays almost no WAL). Empty: none. A
    /// failure or timeout is logged and the snapshot is taken anyway (crash-consistent,
    /// as without a hook).
    pub before_snapshot: Vec<String>,
    pub before_snapshot_timeout: Duration,
    /// Line of the profile in its file.
    pub line: usize,
}

/// An ordered profile table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profiles {
    pub profiles: Vec<Profile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    profile: Vec<RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: toml::Spanned<String>,
    images: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    prepare: Vec<RawStep>,
    #[serde(default)]
    ready: Option<Ready>,
    #[serde(default)]
    ready_timeout_ms: Option<u64>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    clone_remove: Vec<String>,
    #[serde(default)]
    before_snapshot: Vec<String>,
    #[serde(default)]
    before_snapshot_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    mkdir: Option<String>,
    chown: Option<String>,
    run_once: Option<Vec<String>>,
    write: Option<String>,
    owner: Option<String>,
    mode: Option<u32>,
    recursive: Option<bool>,
    creates: Option<String>,
    timeout_ms: Option<u64>,
    template: Option<String>,
    if_missing: Option<bool>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// The signal number of a name (`TERM`, `SIGTERM`, `15`).
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().trim_start_matches("SIG");
    if let Ok(v) = n.parse::<i32>() {
        return (1..=64).contains(&v).then_some(v);
    }
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// `*` any run of characters, `?` one character, everything else itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Profiles {
    /// The built-in table.
    pub fn builtin() -> Result<Self, ProfilesError> {
        Self::parse(BUILTIN, "(built-in)")
    }

    /// A table from a file.
    pub fn from_file(path: &Path) -> Result<Self, ProfilesError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfilesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in table, preceded by the profiles of `file` if given (a file's profile
    /// overrides a built-in one by matching first).
    pub fn with_overrides(file: Option<&Path>) -> Result<Self, ProfilesError> {
        let builtin = Self::builtin()?;
        match file {
            Some(f) => Ok(Self::from_file(f)?.before(builtin)),
            None => Ok(builtin),
        }
    }

    /// `self`'s profiles first, then `base`'s: a file overrides the built-in table by
    /// matching first.
    pub fn before(mut self, base: Profiles) -> Self {
        self.profiles.extend(base.profiles);
        self
    }

    /// Parses and validates a table; errors name the line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfilesError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ProfilesError::Parse {
                origin: origin.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut profiles = Vec::with_capacity(raw.profile.len());
        for rp in raw.profile {
            let line = line_col(text, rp.name.span().start).0;
            let name = rp.name.into_inner();
            let invalid = |message: String| ProfilesError::Invalid {
                origin: origin.to_string(),
                line,
                profile: name.clone(),
                message,
            };
            if name.is_empty() {
                return Err(invalid("empty name".into()));
            }
            if profiles.iter().any(|p: &Profile| p.name == name) {
                return Err(invalid("a profile of this name comes earlier".into()));
            }
            if rp.images.is_empty() || rp.images.iter().any(String::is_empty) {
                return Err(invalid("`images` needs at least one non-empty glob".into()));
            }
            if rp.command.is_empty() {
                return Err(invalid("`command` is empty".into()));
            }
            for (i, a) in rp.command.iter().enumerate() {
                template::check(a).map_err(|m| invalid(format!("command[{i}]: {m}")))?;
            }
            let stop_signal = match &rp.stop_signal {
                None => libc::SIGTERM,
                Some(s) => signal_number(s)
                    .ok_or_else(|| invalid(format!("stop_signal {s:?} is not a signal")))?,
            };
            if rp.ready.is_some() && rp.port.is_none() {
                return Err(invalid("a `ready` probe needs a default `port`".into()));
            }
            for (i, f) in rp.clone_remove.iter().enumerate() {
                let p = Path::new(f);
                if f.is_empty()
                    || p.is_absolute()
                    || p.components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(invalid(format!(
                        "clone_remove[{i}] {f:?} is not a relative path inside the volume"
                    )));
                }
            }
            for (i, a) in rp.before_snapshot.iter().enumerate() {
                template::check(a).map_err(|m| invalid(format!("before_snapshot[{i}]: {m}")))?;
            }
            if rp.before_snapshot_timeout_ms == Some(0) {
                return Err(invalid("before_snapshot_timeout_ms must be above 0".into()));
            }
            let mut prepare = Vec::with_capacity(rp.prepare.len());
            for (i, s) in rp.prepare.into_iter().enumerate() {
                let step = step(s).map_err(|m| invalid(format!("prepare step {}: {m}", i + 1)))?;
                prepare.push(step);
            }
            profiles.push(Profile {
                name: name.clone(),
                images: rp.images,
                user: rp.user.unwrap_or_else(|| "root".into()),
                port: rp.port,
                command: rp.command,
                prepare,
                ready: rp.ready,
                ready_timeout: Duration::from_millis(rp.ready_timeout_ms.unwrap_or(30_000)),
                stop_signal,
                clone_remove: rp.clone_remove,
                before_snapshot: rp.before_snapshot,
                before_snapshot_timeout: Duration::from_millis(
                    rp.before_snapshot_timeout_ms.unwrap_or(5_000),
                ),
                line,
            });
        }
        Ok(Profiles { profiles })
    }

    /// The first profile matching `image` (as written, then its last path component).
    pub fn find(&self, image: &str) -> Option<&Profile> {
        let short = image.rsplit('/').next().unwrap_or(image);
        self.profiles.iter().find(|p| {
            p.images
                .iter()
                .any(|g| glob_match(g, image) || glob_match(g, short))
        })
    }
}

fn step(s: RawStep) -> Result<Step, String> {
    let kinds = [
        s.mkdir.is_some(),
        s.chown.is_some(),
        s.run_once.is_some(),
        s.write.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("needs exactly one of mkdir, chown, run_once, write".into());
    }
    let check = |what: &str, t: &str| template::check(t).map_err(|m| format!("{what}: {m}"));
    let unused = |names: &[(&str, bool)]| -> Result<(), String> {
        match names.iter().find(|(_, set)| *set) {
            Some((n, _)) => Err(format!("`{n}` does not apply to this step kind")),
            None => Ok(()),
        }
    };
    if let Some(mode) = s.mode
        && mode > 0o7777
    {
        return Err(format!("mode {mode:o} is not a file mode"));
    }
    if let Some(path) = s.mkdir {
        check("mkdir", &path)?;
        unused(&[
            ("recursive", s.recursive.is_some()),
            ("creates", s.creates.is_some()),
            ("timeout_ms", s.timeout_ms.is_some()),
            ("template", s.template.is_some()),
            ("if_missing", s.if_missing.is_some()),
        ])?;
        return Ok(Step::Mkdir {
            path,
            owner: s.owner,
            mode: s.mode,
        });
    }
    if let Some(path) = s.chown {
        check("chown", &path)?;
        unused(&[
            ("mode", s.mode.is_some()),
            ("creates", s.creates.is_some()),
            ("timeout_ms", s.timeout_ms.is_some()),
            ("template", s.template.is_some()),
            ("if_missing", s.if_missing.is_some()),
        ])?;
        let owner = s.owner.ok_or("chown needs `owner`")?;
        return Ok(Step::Chown {
            path,
            owner,
            recursive: s.recursive.unwrap_or(false),
        });
    }
    if let Some(argv) = s.run_once {
        if argv.is_empty() {
            return Err("run_once is empty".into());
        }
        for a in &argv {
            check("run_once", a)?;
        }
        unused(&[
            ("owner", s.owner.is_some()),
            ("mode", s.mode.is_some()),
            ("recursive", s.recursive.is_some()),
            ("template", s.template.is_some()),
            ("if_missing", s.if_missing.is_some()),
        ])?;
        let creates = s
            .creates
            .ok_or("run_once needs `creates` (the path that says it ran)")?;
        check("creates", &creates)?;
        return Ok(Step::RunOnce {
            argv,
            creates,
            timeout: Duration::from_millis(s.timeout_ms.unwrap_or(120_000)),
        });
    }
    let path = s.write.unwrap_or_default();
    check("write", &path)?;
    unused(&[
        ("recursive", s.recursive.is_some()),
        ("creates", s.creates.is_some()),
        ("timeout_ms", s.timeout_ms.is_some()),
    ])?;
    let template = s.template.ok_or("write needs `template`")?;
    check("template", &template)?;
    Ok(Step::Write {
        path,
        template,
        owner: s.owner,
        mode: s.mode,
        if_missing: s.if_missing.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_matches_in_order() {
        let p = Profiles::builtin().unwrap();
        let name = |img: &str| p.find(img).map(|p| p.name.clone());
        assert_eq!(name("postgres:16").as_deref(), Some("postgres"));
        assert_eq!(name("postgres").as_deref(), Some("postgres"));
        assert_eq!(name("nginx:latest").as_deref(), Some("nginx"));
        assert_eq!(
            name("docker.io/library/nginx:1.25").as_deref(),
            Some("nginx")
        );
        assert_eq!(name("redis:7").as_deref(), Some("redis"));
        assert_eq!(name("alpine:3").as_deref(), Some("shell"));
        // `postgresfoo` is not PostgreSQL: the shell catches it.
        assert_eq!(name("postgresfoo").as_deref(), Some("shell"));
        // A mirror's replicas (the controller's `+replica` suffix) before the servers.
        assert_eq!(
            name("postgres:16+replica").as_deref(),
            Some("postgres-replica")
        );
        assert_eq!(name("redis:7+replica").as_deref(), Some("redis-replica"));
        let pg = p.find("postgres:16").unwrap();
        assert_eq!(pg.user, "postgres");
        assert_eq!(pg.clone_remove, vec!["postmaster.pid".to_string()]);
        assert_eq!(pg.port, Some(5432));
        assert_eq!(pg.stop_signal, libc::SIGINT);
        assert!(pg.prepare.iter().any(|s| matches!(s, Step::RunOnce { .. })));
    }

    #[test]
    fn postgres_checkpoints_before_a_snapshot_and_nginx_does_nothing() {
        let p = Profiles::builtin().unwrap();
        let pg = p.find("postgres:16").unwrap();
        assert_eq!(
            pg.before_snapshot.last().map(String::as_str),
            Some("CHECKPOINT")
        );
        assert!(
            pg.before_snapshot[0].ends_with("/bin/psql"),
            "{:?}",
            pg.before_snapshot
        );
        assert!(pg.before_snapshot_timeout >= Duration::from_secs(1));
        assert!(p.find("nginx:latest").unwrap().before_snapshot.is_empty());
        // The replica takes no part in weaves' snapshots.
        assert!(
            p.find("postgres:16+replica")
                .unwrap()
                .before_snapshot
                .is_empty()
        );
    }

    #[test]
    fn order_decides_and_a_file_comes_first() {
        let file = Profiles::parse(
            "[[profile]]\nname = \"mine\"\nimages = [\"nginx:*\"]\ncommand = [\"true\"]\n",
            "t",
        )
        .unwrap();
        let p = file.before(Profiles::builtin().unwrap());
        assert_eq!(p.find("nginx:1").unwrap().name, "mine");
        assert_eq!(p.find("nginx").unwrap().name, "nginx");
        let catch_all_first = Profiles::parse(
            "[[profile]]\nname = \"all\"\nimages = [\"*\"]\ncommand = [\"true\"]\n\
             [[profile]]\nname = \"pg\"\nimages = [\"postgres:*\"]\ncommand = [\"true\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(catch_all_first.find("postgres:16").unwrap().name, "all");
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("redis*", "redis"));
        assert!(glob_match("redis:*", "redis:7.2"));
        assert!(!glob_match("redis:*", "redis"));
        assert!(glob_match("a?c*d", "abcxxd"));
        assert!(!glob_match("a?c", "ac"));
    }

    fn err(text: &str) -> String {
        Profiles::parse(text, "bad.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_files_name_the_line() {
        // Syntax.
        let e = err("[[profile]]\nname = \"x\"\nimages = [\"a\" \"b\"]\ncommand = [\"t\"]\n");
        assert!(e.contains("bad.toml: line 3"), "{e}");
        // An unknown key (a typo).
        let e = err("[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncomand = [\"true\"]\n");
        assert!(e.contains("line 4") && e.contains("comand"), "{e}");
        // An unknown placeholder, reported at the profile's line.
        let e = err(
            "\n\n[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"run\", \"{dta}\"]\n",
        );
        assert!(e.contains("line 4") && e.contains("{dta}"), "{e}");
        // A step with two kinds.
        let e = err(
            "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"true\"]\n\
             [[profile.prepare]]\nmkdir = \"{data}\"\nwrite = \"{run}/x\"\n",
        );
        assert!(e.contains("line 2") && e.contains("prepare step 1"), "{e}");
        // A bad signal, a port out of range, a ready probe without a port.
        assert!(err("[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nstop_signal = \"NOPE\"\n").contains("NOPE"));
        assert!(
            err("[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nport = 70000\n")
                .contains("line 5")
        );
        assert!(
            err(
                "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nready = \"tcp\"\n"
            )
            .contains("port")
        );
        // A clone_remove path that leaves the volume.
        for bad in ["../x", "/etc/passwd", ""] {
            let e = err(&format!(
                "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nclone_remove = [{bad:?}]\n"
            ));
            assert!(e.contains("clone_remove[0]"), "{e}");
        }
        // A before_snapshot hook with a bad placeholder, or no time to run.
        let e = err(
            "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nbefore_snapshot = [\"psql\", \"{nope}\"]\n",
        );
        assert!(e.contains("before_snapshot[1]"), "{e}");
        let e = err(
            "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\nbefore_snapshot = [\"t\"]\nbefore_snapshot_timeout_ms = 0\n",
        );
        assert!(e.contains("before_snapshot_timeout_ms"), "{e}");
        // Duplicate names.
        let e = err(
            "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"t\"]\n\
             [[profile]]\nname = \"x\"\nimages = [\"b\"]\ncommand = [\"t\"]\n",
        );
        assert!(e.contains("line 6"), "{e}");
    }
}
