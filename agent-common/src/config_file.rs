//! `--config FILE`: every flag of a binary also settable in a TOML file, one key per flag
//! (the flag's long name, with or without its dashes: `data-dir = "/var/lib/weft"`),
//! strings, numbers, booleans (flags that take no value: `insecure = true`) and arrays
//! (flags given several times: `shard-pool = ["198.18.128.0/17", "fd00:80::/56"]`). The
//! command line wins over the file. A key that names no flag, or a value of the wrong
//! kind, is an error naming the file, the line and the key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory, FromArgMatches};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    File {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// clap's own error (bad value, missing argument, --help, --version), to print and
    /// exit with as clap does.
    #[error("{0}")]
    Args(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error (clap's help and version as they are) and exits as clap does.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Args(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// The line (1-based) where `key` is set in `text`, or 1.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('"');
            l.strip_prefix(key).is_some_and(|rest| {
                rest.trim_start()
                    .trim_start_matches('"')
                    .trim_start()
                    .starts_with('=')
            })
        })
        .map_or(1, |i| i + 1)
}

/// The arguments `text` (a TOML file at `path`) stands for, as `--flag value` pairs, for
/// the command `command`, leaving out the flags in `given` (long names the command line
/// sets itself: it wins, also over a file's list).
pub fn file_args(
    command: &clap::Command,
    path: &Path,
    text: &str,
    given: &[String],
) -> Result<Vec<OsString>, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(1, |span| {
            text[..span.start.min(text.len())].lines().count().max(1)
        });
        ConfigError::File {
            path: path.to_owned(),
            line,
            message: e.message().to_owned(),
        }
    })?;
    let mut out = Vec::new();
    for (raw_key, value) in &table {
        let key = raw_key.trim_start_matches('-').replace('_', "-");
        let at = |message: String| ConfigError::File {
            path: path.to_owned(),
            line: line_of(text, raw_key),
            message,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !["config", "help", "version"].contains(&key.as_str()))
            .ok_or_else(|| {
                at(format!(
                    "`{raw_key}` is not a setting of {} (its flags are in `{} --help`)",
                    command.get_name(),
                    command.get_name()
                ))
            })?;
        if given.contains(&key) {
            continue;
        }
        let flag = format!("--{key}");
        let takes_no_value = matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                toml::Value::Datetime(d) => Ok(d.to_string()),
                other => Err(at(format!(
                    "`{raw_key}`: a {} is not a value of {flag}",
                    other.type_str()
                ))),
            }
        };
        match value {
            toml::Value::Boolean(b) if takes_no_value => {
                if *b {
                    out.push(OsString::from(&flag));
                }
            }
            _ if takes_no_value => {
                return Err(at(format!(
                    "`{raw_key}` is a switch: write `{raw_key} = true` (or false)"
                )));
            }
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) && items.len() != 1 {
                    return Err(at(format!(
                        "`{raw_key}` takes one value, not a list of {}",
                        items.len()
                    )));
                }
                for item in items {
                    out.push(OsString::from(&flag));
                    out.push(OsString::from(scalar(item)?));
                }
            }
            other => {
                out.push(OsString::from(&flag));
                out.push(OsString::from(scalar(other)?));
            }
        }
    }
    Ok(out)
}

/// Where `--config` points in `args` (`--config FILE` or `--config=FILE`).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            return None;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Parses `P` from `args` (the program name first), with the settings of the file that
/// `--config FILE` names placed before the command line's own arguments (so the command
/// line wins: later occurrences override earlier ones).
pub fn parse_from<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<P, ConfigError> {
    let command = P::command().args_override_self(true);
    let mut full = Vec::with_capacity(args.len());
    full.extend(args.first().cloned());
    if let Some(path) = config_path(&args) {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let given: Vec<String> = args
            .iter()
            .skip(1)
            .take_while(|a| *a != "--")
            .filter_map(|a| {
                let a = a.to_str()?.strip_prefix("--")?;
                Some(a.split_once('=').map_or(a, |(k, _)| k).to_owned())
            })
            .collect();
        full.extend(file_args(&command, &path, &text, &given)?);
    }
    full.extend(args.into_iter().skip(1));
    let matches = command.try_get_matches_from(full)?;
    Ok(P::from_arg_matches(&matches)?)
}

/// [`parse_from`] the process's arguments; prints the error and exits on failure.
pub fn parse<P: CommandFactory + FromArgMatches>() -> P {
    parse_from(std::env::args_os().collect()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser, PartialEq)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, default_value = "/var/lib/weft")]
        data_dir: String,
        #[arg(long, default_value_t = 16)]
        max_shards: u32,
        #[arg(long)]
        insecure: bool,
        #[arg(long = "pool")]
        pools: Vec<String>,
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("weft-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write");
        path
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_kind_of_flag_comes_from_the_file_and_the_command_line_wins() {
        let path = write(
            "ok",
            "data-dir = \"/srv/weft\"\nmax_shards = 32\ninsecure = true\npool = [\"a\", \"b\"]\n",
        );
        let p = path.to_str().unwrap();
        let from_file: Demo = parse_from(args(&["demo", "--config", p])).expect("parse");
        assert_eq!(
            from_file,
            Demo {
                config: Some(path.clone()),
                data_dir: "/srv/weft".into(),
                max_shards: 32,
                insecure: true,
                pools: vec!["a".into(), "b".into()],
            }
        );
        let overridden: Demo = parse_from(args(&[
            "demo",
            "--max-shards",
            "8",
            &format!("--config={p}"),
            "--pool",
            "c",
        ]))
        .expect("parse");
        assert_eq!(overridden.max_shards, 8, "the command line wins");
        assert_eq!(
            overridden.pools,
            vec!["c".to_owned()],
            "a list on the command line replaces the file's"
        );
        assert_eq!(overridden.data_dir, "/srv/weft");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bad_files_name_the_file_line_and_key() {
        for (name, text, words) in [
            (
                "unknown",
                "data-dir = \"x\"\n\nmax-shard = 3\n",
                &[":3:", "`max-shard` is not a setting of demo"][..],
            ),
            ("switch", "insecure = \"yes\"\n", &[":1:", "switch"]),
            ("list", "data-dir = [\"a\", \"b\"]\n", &[":1:", "one value"]),
            ("table", "[data-dir]\nx = 1\n", &["table is not a value"]),
            ("syntax", "data-dir = \n", &[":1:"]),
            (
                "nested",
                "config = \"other.toml\"\n",
                &["`config` is not a setting"],
            ),
        ] {
            let path = write(name, text);
            let e = parse_from::<Demo>(args(&["demo", "--config", path.to_str().unwrap()]))
                .expect_err(name);
            let message = e.to_string();
            assert!(
                message.starts_with(path.to_str().unwrap()),
                "{name}: {message}"
            );
            for w in words {
                assert!(message.contains(w), "{name}: {message:?} lacks {w:?}");
            }
            let _ = std::fs::remove_file(path);
        }
        let e = parse_from::<Demo>(args(&["demo", "--config", "/nonexistent/weft.toml"]))
            .expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/weft.toml: "), "{e}");
        let path = write("badvalue", "max-shards = \"many\"\n");
        let e = parse_from::<Demo>(args(&["demo", "--config", path.to_str().unwrap()]))
            .expect_err("value");
        assert!(e.to_string().contains("--max-shards"), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
