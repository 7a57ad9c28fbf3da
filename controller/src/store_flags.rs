//! Which store the controller runs on: the redb file in `--data-dir` (the default), memory
//! (`--data-dir ""`), or an etcd cluster (`--etcd`), where this controller first becomes
//! the only writer (a fence under an etcd lease) and stops if it ever loses that.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weft_store::{EtcdConfig, EtcdStore, MemoryStore, RedbStore, Store};

/// What a controller waiting for the writer's lease does meanwhile (`--standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Standby {
    /// Serve as a follower replica: agents' flow records, topology reads (merged across
    /// the replicas); everything else redirected to the leader. Takes over (restarting
    /// itself as the leader) when the writer's lease lapses.
    Serve,
    /// Serve nothing until this controller holds the writer's lease.
    Wait,
}

/// The store opened, and this controller's part in a group of replicas on etcd.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Where the controller's state lives (a follower's is in memory: the leader owns
    /// the shared one).
    pub store: Arc<dyn Store>,
    /// The etcd cluster, with `--etcd`.
    pub etcd: Option<Arc<EtcdStore>>,
    /// This controller is a follower replica (another one holds the writer's lease).
    pub follower: bool,
    /// The writer's election key.
    pub fence_key: String,
}

/// The store flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory of the store (`weft.redb`) and of the admin token file; an empty value
    /// keeps everything in memory.
    #[arg(long, default_value = "/var/lib/weft")]
    pub data_dir: String,
    /// Keep the store on an etcd cluster instead of the redb file:
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (client URLs, plain HTTP; keys under
    /// PREFIX, default `weft/`). The controller becomes the cluster's only writer under a
    /// lease (waiting, as a standby, while another controller holds it) and exits if it
    /// loses it. The cluster must allow large transactions (etcd `--max-txn-ops 100000
    /// --max-request-bytes 16777216`): allocations are committed in groups.
    #[arg(long, value_name = "URL")]
    pub etcd: Option<String>,
    /// How long the writer's etcd lease lives without renewal: a controller that stops
    /// renewing it (killed, stalled, cut off) is replaced by a standby after this.
    #[arg(long, default_value = "5s", value_parser = agent_common::time::parse_duration)]
    pub etcd_lease_ttl: Duration,
    /// This controller's name among the replicas on one etcd (its topology checkpoint and
    /// membership are kept under it: keep it across restarts). Default: the host name.
    #[arg(long)]
    pub replica_name: Option<String>,
    /// What a controller on etcd does while another one holds the writer's lease.
    #[arg(long, value_enum, default_value = "serve")]
    pub standby: Standby,
    /// The REST URL the other replicas reach this one at (they merge its topology into
    /// theirs). Default: http(s)://<the --http-listen address as bound>.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// The CA the other replicas' REST certificates chain to (PEM). Default: --client-ca.
    #[arg(long, value_name = "FILE")]
    pub replica_ca: Option<std::path::PathBuf>,
    /// How often the live topology (every dependency's counters, latency histograms and
    /// time buckets, every service) is checkpointed to the store: a controller killed
    /// loses at most this much of it. 0 turns checkpoints off (and nothing is read back
    /// at start).
    #[arg(long, default_value = "5s", value_parser = agent_common::time::parse_duration)]
    pub topology_checkpoint_interval: Duration,
}

/// The election key of the writer for a store prefix: outside the prefix, so no scan of
/// the store sees it.
fn fence_key(prefix: &str) -> String {
    format!("{}.writer", prefix.trim_end_matches('/'))
}

impl StoreArgs {
    /// This replica's name (`--replica-name`, else the host name).
    pub fn replica_name(&self) -> anyhow::Result<String> {
        let name = match &self.replica_name {
            Some(name) => name.clone(),
            None => std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "controller".into()),
        };
        crate::replicas::check_name(&name).map_err(anyhow::Error::msg)?;
        Ok(name)
    }

    /// Opens the store; on etcd, becomes the writer, or a follower replica while another
    /// controller is (`--standby serve`), or waits until it is the writer
    /// (`--standby wait`).
    pub fn open(&self) -> anyhow::Result<Opened> {
        if let Some(url) = &self.etcd {
            // The data directory still holds the first admin token.
            if !self.data_dir.is_empty() {
                std::fs::create_dir_all(&self.data_dir)
                    .with_context(|| format!("making --data-dir {}", self.data_dir))?;
            }
            return self.open_etcd(url);
        }
        let store: Arc<dyn Store> = if self.data_dir.is_empty() {
            Arc::new(MemoryStore::default())
        } else {
            Arc::new(
                RedbStore::open_dir(std::path::Path::new(&self.data_dir))
                    .with_context(|| format!("--data-dir {}", self.data_dir))?,
            )
        };
        Ok(Opened {
            store,
            etcd: None,
            follower: false,
            fence_key: String::new(),
        })
    }

    fn open_etcd(&self, url: &str) -> anyhow::Result<Opened> {
        let config = EtcdConfig::parse(url).context("--etcd")?;
        let key = fence_key(&config.prefix);
        let store = Arc::new(EtcdStore::open(config).context("--etcd: connecting")?);
        let holder = self.replica_name()?;
        let wait = match self.standby {
            Standby::Serve => Duration::ZERO,
            Standby::Wait => Duration::from_secs(10),
        };
        loop {
            match store.acquire_fence(&key, &holder, self.etcd_lease_ttl, wait) {
                Ok(lease) => {
                    tracing::info!(key, lease, "etcd: this controller is the writer");
                    break;
                }
                Err(e) if e.0.contains("is held by") && self.standby == Standby::Serve => {
                    tracing::info!("etcd: follower replica ({e})");
                    return Ok(Opened {
                        store: Arc::new(MemoryStore::default()),
                        etcd: Some(store),
                        follower: true,
                        fence_key: key,
                    });
                }
                Err(e) if e.0.contains("is held by") => {
                    tracing::info!("etcd: standby ({e}); waiting for the lease to lapse");
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(e)).context("--etcd: taking the writer lease");
                }
            }
        }
        let watched = store.clone();
        std::thread::Builder::new()
            .name("etcd-fence".into())
            .spawn(move || {
                while watched.holds_fence() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                // Every write is refused from now on: stop, so a supervisor starts this
                // controller again as a standby.
                tracing::error!("etcd: the writer lease was lost; another controller may write the store: exiting");
                std::process::exit(3);
            })
            .context("starting the fence watcher")?;
        Ok(Opened {
            store: store.clone(),
            etcd: Some(store),
            follower: false,
            fence_key: key,
        })
    }
}
