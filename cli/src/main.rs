//! `weft`: a command-line client of the controller's HTTP API.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Client of the weft controller")]
struct Cli {
    /// Base URL of the controller's HTTP API.
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROLLER",
        default_value = "http://127.0.0.1:7070"
    )]
    controller: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The application topology observed from traffic.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Print the topology.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Ascii)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Ascii,
    Dot,
    Json,
}

impl Format {
    /// The controller path serving this format.
    fn path(self) -> &'static str {
        match self {
            Self::Ascii => "/topology.txt",
            Self::Dot => "/topology.dot",
            Self::Json => "/topology",
        }
    }
}

/// `base` joined with an absolute `path`, without doubling the slash.
fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The most useful sentence of an error body: an RFC 9457 problem's `detail` (or
/// `title`), else the body itself.
fn problem_message(body: &str) -> String {
    let problem = serde_json::from_str::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    field("detail")
        .or_else(|| field("title"))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn fetch(base: &str, path: &str) -> anyhow::Result<String> {
    let url = endpoint(base, path);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    match agent.get(&url).call() {
        Ok(response) => response
            .into_string()
            .with_context(|| format!("reading the answer of {url}")),
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            Err(anyhow!(
                "the controller answered {code} for {url}: {}",
                problem_message(&body)
            ))
        }
        Err(error @ ureq::Error::Transport(_)) => {
            Err(anyhow!(error)).with_context(|| format!("cannot reach the controller at {base}"))
        }
    }
}

fn show(controller: &str, format: Format) -> anyhow::Result<String> {
    let body = fetch(controller, format.path())?;
    let mut text = if format == Format::Json {
        let value: serde_json::Value =
            serde_json::from_str(&body).context("the controller's topology is not valid JSON")?;
        serde_json::to_string_pretty(&value).context("formatting the topology")?
    } else {
        body
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let text = match cli.command {
        Command::Topology {
            command: TopologyCommand::Show { format },
        } => show(&cli.controller, format)?,
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_without_doubling_slashes() {
        assert_eq!(
            endpoint("http://c:7070/", "/topology"),
            "http://c:7070/topology"
        );
        assert_eq!(
            endpoint("http://c:7070", "/topology.dot"),
            "http://c:7070/topology.dot"
        );
    }

    #[test]
    fn problem_detail_is_preferred_then_title_then_body() {
        let problem = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no resource at /x"}"#;
        assert_eq!(problem_message(problem), "no resource at /x");
        assert_eq!(problem_message(r#"{"title":"Bad Gateway"}"#), "Bad Gateway");
        assert_eq!(problem_message(" plain failure \n"), "plain failure");
    }

    #[test]
    fn formats_map_to_controller_paths() {
        assert_eq!(Format::Ascii.path(), "/topology.txt");
        assert_eq!(Format::Dot.path(), "/topology.dot");
        assert_eq!(Format::Json.path(), "/topology");
    }

    #[test]
    fn command_line_parses_format_and_controller() {
        let cli = Cli::try_parse_from([
            "weft",
            "topology",
            "show",
            "--format",
            "dot",
            "--controller",
            "http://h:1",
        ])
        .expect("valid command line");
        assert_eq!(cli.controller, "http://h:1");
        assert!(matches!(
            cli.command,
            Command::Topology {
                command: TopologyCommand::Show {
                    format: Format::Dot
                }
            }
        ));
        assert!(Cli::try_parse_from(["weft", "topology", "show", "--format", "svg"]).is_err());
    }
}
