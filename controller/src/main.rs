//! `weft-controller`: serves the agent gRPC API and the HTTP API until SIGINT/SIGTERM.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use weft_control::grpc::ControlApi;
use weft_controller::AppState;
use weft_controller::api::grpc::AgentApi;
use weft_controller::api::grpc_topology::TopologyApi;
use weft_controller::api::http;
use weft_controller::api::limits::{
    CountOversized, GrpcConcurrency, LimitedListener, grpc_incoming,
};
use weft_controller::api::networks_grpc::MirrorApi;
use weft_controller::api::shadows_grpc::ShadowApi;
use weft_controller::api::shards_grpc::ShardApi;
use weft_controller::api::weaves_grpc::WeaveApi;
use weft_controller::auth::grpc::RequireTokenLayer;
use weft_controller::auth_flags::AuthArgs;
use weft_controller::checkpoint::Checkpointer;
use weft_controller::limit_flags::LimitArgs;
use weft_controller::shard_flags::ShardArgs;

use weft_topology::history::AllowList;
use weft_topology::time::{now_unix_ns, parse_duration};
use weft_topology::topology::{BucketConfig, Rules, ServiceClassifier};

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "weft-controller",
    version,
    about = "weft's controller: topology from agent flow records"
)]
struct Args {
    /// A TOML file of settings: any flag by its long name (`data-dir = "/var/lib/weft"`,
    /// `insecure = true`, lists for repeated flags). The command line wins over the file,
    /// the file over the environment. deploy/config/ has a commented example.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Address of the agent gRPC API.
    #[arg(long, default_value = "127.0.0.1:7071")]
    grpc_listen: SocketAddr,
    /// Address of the HTTP API (topology, /metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:7070")]
    http_listen: SocketAddr,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `weft_controller=debug`.
    #[arg(long, default_value = "info", env = "WEFT_LOG")]
    log: String,
    #[command(flatten)]
    store: weft_controller::store_flags::StoreArgs,
    /// How often a topology snapshot is stored (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    snapshot_interval: Duration,
    /// Width of the topology's time buckets (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    bucket_width: Duration,
    /// How long time buckets are kept (e.g. 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    retention: Duration,
    /// TOML file of service classification rules (`[[rule]] match_name/match_port/
    /// match_protocol`, `type`).
    #[arg(long)]
    classifier_rules: Option<std::path::PathBuf>,
    /// TOML or JSON file of allowed dependencies (`source -> target [protocol]`, globs).
    #[arg(long)]
    allowed_deps: Option<std::path::PathBuf>,
    /// How often every node with volumes of a source network snapshots them (the history
    /// weaves branch from); 0: only at weave operations.
    #[arg(long, default_value_t = 300)]
    volume_snapshot_interval_seconds: u32,
    /// Scheduled volume snapshots kept per node (those weaves were made from are kept as
    /// well).
    #[arg(long, default_value_t = 12)]
    volume_snapshot_keep: u32,
    /// How long a weave operation waits for the agents (a weave's nodes applied, a
    /// snapshot, a sync) before it answers.
    #[arg(long, default_value_t = 30)]
    weave_wait_seconds: u64,
    #[command(flatten)]
    shards: ShardArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// How often new dependencies and allow-list violations are looked for.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

fn build_state(
    args: &Args,
    auth: weft_controller::auth::AuthConfig,
    opened: &weft_controller::store_flags::Opened,
) -> anyhow::Result<(AppState, Option<Checkpointer>)> {
    let classifier = match &args.classifier_rules {
        Some(path) => ServiceClassifier::with_rules(Rules::load(path)?),
        None => ServiceClassifier::default(),
    };
    let store = opened.store.clone();
    // On etcd, each replica checkpoints its own topology under its name.
    let checkpoint_store = match &opened.etcd {
        Some(etcd) => {
            weft_controller::replicas::checkpoint_store(etcd.clone(), &args.store.replica_name()?)
        }
        None => store.clone(),
    };
    // A follower's tokens are the site's, in etcd (the leader's own state is not).
    let token_store: std::sync::Arc<dyn weft_store::Store> = match &opened.etcd {
        Some(etcd) if opened.follower => etcd.clone(),
        _ => store.clone(),
    };
    if args.bucket_width.is_zero() {
        anyhow::bail!("--bucket-width must be more than 0");
    }
    if args.snapshot_interval.is_zero() {
        anyhow::bail!("--snapshot-interval must be more than 0");
    }
    let buckets = BucketConfig {
        width: args.bucket_width,
        retention: args.retention,
    };
    let shard_config = args.shards.config().map_err(|e| anyhow::anyhow!(e))?;
    let limits = &args.limits;
    let state = AppState::builder()
        .classifier(classifier)
        .buckets(buckets)
        .shard_config(shard_config)
        .auth(auth)
        .topology_limits(
            limits
                .topology(args.retention)
                .map_err(anyhow::Error::msg)?,
        )
        .history_limits(limits.history().map_err(anyhow::Error::msg)?)
        .limits(limits.config().map_err(anyhow::Error::msg)?)
        .volume_snapshots(weft_networks::SnapshotPolicy {
            interval_seconds: args.volume_snapshot_interval_seconds,
            keep: args.volume_snapshot_keep,
        })
        .start_with_tokens(store, token_store)?;
    state
        .weaves
        .set_wait(Duration::from_secs(args.weave_wait_seconds));
    if !opened.follower {
        args.auth
            .bootstrap(&args.store.data_dir, &state.auth.tokens)?;
    }
    tracing::info!(epoch = state.control.epoch(), "control plane open");
    if let Some(path) = &args.allowed_deps {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --allowed-deps {}", path.display()))?;
        let list = AllowList::parse(&text, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("--allowed-deps: {e}"))?;
        state.history.set_allow_list(list, &text)?;
    }
    // The last checkpoint of the live topology, read back before any agent connects.
    let checkpointer = if args.store.topology_checkpoint_interval.is_zero() {
        None
    } else {
        let (checkpointer, restored) = Checkpointer::restore(
            state.topology.clone(),
            state.registry.clone(),
            checkpoint_store,
        )
        .context("reading the topology checkpoint")?;
        tracing::info!(
            entries = restored.entries,
            refused = restored.refused,
            agents = restored.agents,
            torn = restored.torn,
            "topology checkpoint read back"
        );
        Some(checkpointer)
    };
    Ok((state, checkpointer))
}

/// How a replica trusts the others' REST certificates: `--replica-ca`, else
/// `--client-ca` (one site CA signs them all), else the system's roots.
fn replica_tls(args: &Args) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    let Some(path) = args
        .store
        .replica_ca
        .as_ref()
        .or(args.auth.client_ca.as_ref())
    else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the replicas' CA {}", path.display()))?;
    let config = weft_pki::https_client_config(&pem)
        .map_err(|e| anyhow::anyhow!("the replicas' CA {}: {e}", path.display()))?;
    Ok(Some(std::sync::Arc::new(config)))
}

/// Counts allow-list violations (and publishes new dependencies whose announcement at
/// ingest was dropped, [`weft_controller::events`]) every [`WATCH_INTERVAL`], and stores
/// a snapshot every `snapshot_interval`, until `stop` resolves.
async fn history_loop(
    state: AppState,
    replicas: Option<std::sync::Arc<weft_controller::replicas::Replicas>>,
    snapshot_interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    // With replicas, the whole site's topology: every replica's merged.
    let view = |state: &AppState| {
        let (state, replicas) = (state.clone(), replicas.clone());
        async move {
            let Some(replicas) = replicas else {
                return state.snapshot();
            };
            let own = state.clone();
            let merged = tokio::task::spawn_blocking(move || match replicas.merged(&state) {
                Ok(Some((merged, _))) => merged.snapshot(),
                Ok(None) => state.snapshot(),
                Err(error) => {
                    tracing::warn!(%error, "merging the replicas' topologies failed: this replica's alone");
                    state.snapshot()
                }
            })
            .await;
            merged.unwrap_or_else(|_| own.snapshot())
        }
    };
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let mut snapshots = tokio::time::interval(snapshot_interval);
    snapshots.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = watch.tick() => state.history.observe(&view(&state).await),
            _ = snapshots.tick() => {
                let snapshot = view(&state).await;
                if let Err(error) = state.history.take_snapshot(&snapshot, now_unix_ns()) {
                    tracing::warn!(%error, "storing a topology snapshot failed");
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = agent_common::config_file::parse();
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let (auth, tls) = args.auth.config()?;
    let opened = args.store.open()?;
    let (state, checkpointer) = build_state(&args, auth, &opened)?;

    let grpc_listener = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC listener on {}", args.grpc_listen))?;
    let http_listener = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", args.http_listen))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .context("gRPC listener address")?;
    let http_addr = http_listener
        .local_addr()
        .context("HTTP listener address")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut server = tonic::transport::Server::builder();
    let rest_tls = match tls {
        Some(tls) => {
            server = server
                .tls_config(tls.grpc)
                .context("the gRPC listener's TLS")?;
            Some(tls.rest)
        }
        None => None,
    };
    let http_scheme = if rest_tls.is_some() { "https" } else { "http" };
    // Replicas on etcd: this one is a member; topology reads merge every replica's.
    let replicas = match &opened.etcd {
        Some(etcd) => {
            let url = args
                .store
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{http_scheme}://{http_addr}"));
            Some(std::sync::Arc::new(
                weft_controller::replicas::Replicas::join(
                    etcd.clone(),
                    &args.store.replica_name()?,
                    &url,
                    &opened.fence_key,
                    opened.follower,
                    replica_tls(&args)?,
                )
                .context("joining the controller replicas on etcd")?,
            ))
        }
        None => None,
    };
    if let (Some(replicas), false) = (&replicas, opened.follower) {
        // The token replicas ask each other's topology with.
        if let Some(secret) = replicas.secret().context("the replicas' token")? {
            state
                .auth
                .tokens
                .adopt(
                    weft_controller::replicas::TOKEN_NAME,
                    weft_controller::auth::Role::Read,
                    &secret,
                )
                .map_err(|e| anyhow::anyhow!("the replicas' token: {e}"))?;
        }
    }
    // Limits: crate::api::limits (connections, message size), crate::limits (the rest).
    let max_message = state.limits.config.grpc_max_message_bytes;
    let mut router = server
        .layer(CountOversized::layer(state.limits.clone()))
        .layer(RequireTokenLayer {
            auth: state.auth.clone(),
            metrics: state.metrics.clone(),
        })
        .layer(GrpcConcurrency::layer(state.limits.clone()))
        .add_service(
            AgentApi::new(state.clone())
                .into_service()
                .max_decoding_message_size(max_message),
        );
    let grpc_incoming_stream = grpc_incoming(grpc_listener, state.limits.clone());
    let grpc = if opened.follower {
        tokio::spawn(
            router
                .add_service(weft_controller::replicas_grpc::FollowerControl::service())
                .serve_with_incoming_shutdown(grpc_incoming_stream, stopped(shutdown_rx.clone())),
        )
    } else {
        router = router
            .add_service(
                TopologyApi::new(state.clone())
                    .into_service()
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                ControlApi::new(state.control.clone())
                    .with_host_check(state.auth.config.agents.clone().host_check())
                    .into_service()
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                ShardApi::new(state.clone())
                    .into_service()
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                MirrorApi::new(state.clone())
                    .into_service()
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                ShadowApi::new(state.clone())
                    .into_service()
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                WeaveApi::new(state.clone())
                    .into_service()
                    .max_decoding_message_size(max_message),
            );
        tokio::spawn(
            router.serve_with_incoming_shutdown(grpc_incoming_stream, stopped(shutdown_rx.clone())),
        )
    };
    // The leader's singleton loops (snapshots); a follower takes over by restarting.
    let history = (!opened.follower).then(|| {
        tokio::spawn(history_loop(
            state.clone(),
            replicas.clone(),
            args.snapshot_interval,
            stopped(shutdown_rx.clone()),
        ))
    });
    let (promote_tx, mut promote_rx) = watch::channel(false);
    if let (Some(replicas), true) = (&replicas, opened.follower) {
        tokio::spawn(weft_controller::replicas::follow(
            replicas.clone(),
            state.clone(),
            promote_tx,
            stopped(shutdown_rx.clone()),
        ));
    }
    // Stops with the servers, after one last checkpoint.
    let checkpoints = checkpointer.map(|c| {
        tokio::spawn(weft_controller::checkpoint::run(
            c,
            args.store.topology_checkpoint_interval,
            stopped(shutdown_rx.clone()),
        ))
    });
    let housekeeping = tokio::spawn(weft_controller::limits::housekeeping(
        state.clone(),
        stopped(shutdown_rx.clone()),
    ));
    let app = match &replicas {
        Some(replicas) => weft_controller::replicas::layer(
            http::app(state.clone()),
            replicas.clone(),
            state.clone(),
        ),
        None => http::app(state.clone()),
    };
    let http = tokio::spawn(
        axum::serve(
            LimitedListener::with_tls(http_listener, state.limits.clone(), rest_tls),
            app,
        )
        .with_graceful_shutdown(stopped(shutdown_rx))
        .into_future(),
    );

    let shutdown = shutdown_signal()?;
    if opened.follower {
        println!("weft-controller following grpc={grpc_addr} http={http_addr}");
    } else {
        println!("weft-controller listening grpc={grpc_addr} http={http_addr}");
    }
    tracing::info!(%grpc_addr, %http_addr, http_scheme, instance = %state.controller_instance, "controller started");

    let mut grpc = grpc;
    let mut http = http;
    // A server that stops by itself is an error, but the state is still shut down below.
    let mut promote = false;
    let stopped_early: anyhow::Result<()> = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        _ = promote_rx.wait_for(|p| *p) => {
            tracing::info!("the writer's lease lapsed: restarting as the leader");
            promote = true;
            Ok(())
        }
        result = &mut grpc => {
            result.context("gRPC server task").and_then(|r| r.context("gRPC server"))
                .and_then(|()| Err(anyhow::anyhow!("gRPC server stopped unexpectedly")))
        }
        result = &mut http => {
            result.context("HTTP server task").and_then(|r| r.context("HTTP server"))
                .and_then(|()| Err(anyhow::anyhow!("HTTP server stopped unexpectedly")))
        }
    };
    // Receivers may already be gone if a server stopped; nothing else to tell then.
    let _ = shutdown_tx.send(true);
    let drained = if stopped_early.is_ok() {
        tokio::time::timeout(SHUTDOWN_GRACE, async {
            let grpc = grpc.await;
            let http = http.await;
            (grpc, http)
        })
        .await
        .ok()
    } else {
        grpc.abort();
        http.abort();
        None
    };
    if let Some(history) = history {
        let _ = history.await;
    }
    let _ = housekeeping.await;
    if let Some(checkpoints) = checkpoints {
        let _ = checkpoints.await;
    }
    // After the servers: no new request reaches the shard manager. Migration runners stop,
    // and what was queued for the shard writer is committed before the process ends.
    state.shutdown().await;
    tracing::info!("shard writer drained");
    stopped_early?;
    match drained {
        Some((grpc, http)) => {
            grpc.context("gRPC server task")?.context("gRPC server")?;
            http.context("HTTP server task")?.context("HTTP server")?;
        }
        None => tracing::warn!(grace = ?SHUTDOWN_GRACE, "servers did not drain in time"),
    }
    if promote {
        // Its topology is checkpointed (above): the same program, the same flags, starts
        // again and takes the lease (or follows whoever was quicker).
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().context("this program's path")?;
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        return Err(anyhow::anyhow!(error).context("restarting as the leader"));
    }
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the controller says it is
/// listening, so a signal right after that line is not lost) and resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/controller.toml")
    }

    /// The shipped example file is a valid configuration, every setting in it reaches its
    /// flag, and the command line wins over it.
    #[test]
    fn example_config_file_sets_the_flags() {
        let path = example();
        let args: Args = agent_common::config_file::parse_from(
            [
                "weft-controller",
                "--config",
                path.to_str().unwrap(),
                "--log",
                "debug",
            ]
            .map(std::ffi::OsString::from)
            .to_vec(),
        )
        .expect("the example parses");
        assert_eq!(args.grpc_listen.to_string(), "0.0.0.0:7071");
        assert_eq!(args.store.data_dir, "/var/lib/weft");
        assert_eq!(args.log, "debug", "the command line wins");
        assert_eq!(args.shards.pools, ["198.18.128.0/17", "fd00:80::/56"]);
        assert_eq!(
            args.shards.migration_deadline,
            Some(Duration::from_secs(30 * 60))
        );
        assert!(args.auth.metrics_open);
        args.shards
            .config()
            .expect("the example's shard settings are valid");
    }
}
