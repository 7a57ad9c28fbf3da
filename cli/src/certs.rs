//! `weft certs init|issue`: a CA and certificates for mutual TLS between agents and
//! controllers, for a lab or a small site (a larger one uses its own PKI: the controller
//! needs a server certificate, and each agent a client certificate whose URI SAN is
//! `spiffe://weft/host/<host-id>`).

use std::path::PathBuf;

use weft_pki::{Kind, issue, new_ca, read, write};

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a CA: DIR/ca.pem and DIR/ca.key (keep the key offline once the site is set up).
    Init {
        #[arg(long, default_value = "weft-certs")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a certificate signed by DIR's CA: `controller` (DIR/controller.pem|key) or
    /// `agent` (`DIR/agent-<host-id>.pem|key`).
    Issue {
        #[command(subcommand)]
        what: IssueWhat,
        #[arg(long, global = true, default_value = "weft-certs")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, global = true, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long, global = true)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum IssueWhat {
    /// The controller's server certificate.
    Controller {
        /// A DNS name or IP address agents and clients dial (repeat for several).
        #[arg(long = "san", required = true)]
        names: Vec<String>,
    },
    /// An agent's client certificate, bound to one host.
    Agent {
        #[arg(long)]
        host_id: String,
    },
}

pub fn run(command: &CertsCommand) -> anyhow::Result<String> {
    match command {
        CertsCommand::Init { dir, days, force } => {
            let ca = new_ca("weft CA", *days)?;
            let (cert, key) = write(dir, "ca", &ca, *force)?;
            Ok(format!("CA: {} (key {})\n", cert.display(), key.display()))
        }
        CertsCommand::Issue {
            what,
            dir,
            days,
            force,
        } => {
            let ca = read(dir, "ca").map_err(|e| {
                anyhow::anyhow!(
                    "{e} (make the CA first: weft certs init --dir {})",
                    dir.display()
                )
            })?;
            let (name, kind) = match what {
                IssueWhat::Controller { names } => (
                    "controller".to_owned(),
                    Kind::Controller {
                        names: names.clone(),
                    },
                ),
                IssueWhat::Agent { host_id } => (
                    format!("agent-{host_id}"),
                    Kind::Agent {
                        host_id: host_id.clone(),
                    },
                ),
            };
            let pem = issue(&ca, &kind, *days)?;
            let (cert, key) = write(dir, &name, &pem, *force)?;
            Ok(format!(
                "{name}: {} (key {})\n",
                cert.display(),
                key.display()
            ))
        }
    }
}
