//! weft-agent: loads the TC flow observer onto this hypervisor's workload interfaces and
//! streams flow records to the controller.

mod attach;
mod collector;
mod config;
mod control;
// Part of its API is for the reconcilers to come (sampling, routing).
#[allow(dead_code)]
mod controller_link;
#[allow(dead_code)]
mod datapath;
mod exporter;
mod flows;
mod hostevents;
mod l7table;
mod metrics;
mod networks;
mod outbox;
mod queue;
mod realize;
mod shadow;
mod steer;
mod stream_turns;
mod workloads;

#[cfg(test)]
mod testns;
#[cfg(test)]
mod testrun;

/// jemalloc: the collector allocates and frees per connection (records' strings, L7
/// buffers); glibc's malloc spent a third of its time on that under short connections
/// (`Cargo.toml` has the figures).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    attach::{Attacher, PROG_EGRESS, PROG_INGRESS},
    collector::Collector,
    config::Args,
    datapath::{Datapath, Pins, pins},
    exporter::Exporter,
    flows::FlowTracker,
    hostevents::HostEvents,
    metrics::Metrics,
    queue::RecordQueue,
    workloads::Registry,
};

/// The flow observer, built from agent-ebpf by build.rs.
static FLOW_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-flow"));

/// How long the agent keeps trying to hand its last records over at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    // `weft-agent request-router ...`: a request router, started by the agent itself
    // (steer::router::process).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(steer::router::process::SUBCOMMAND) {
        return steer::router::process::main(&argv[2..]);
    }
    agent()
}

#[tokio::main]
async fn agent() -> anyhow::Result<()> {
    let args: Args = agent_common::config_file::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();

    let pin_dir = args
        .bpffs_dir
        .clone()
        .unwrap_or_else(|| pins::default_dir(&args.host_id));
    if args.cleanup {
        stop_request_routers(&args.router_run_dir).await;
        return cleanup(&pin_dir);
    }

    let workloads = match &args.workloads {
        Some(path) => config::load_workloads(path)?,
        None => Vec::new(),
    };
    // Every metric of the agent registers here; served at --metrics-listen.
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut metrics_registry));
    let control_metrics = Arc::new(control::ControlMetrics::new(&mut metrics_registry));
    let shadow_metrics = Arc::new(shadow::ShadowTapMetrics::new(&mut metrics_registry));
    let steer_metrics = Arc::new(steer::SteerMetrics::new(&mut metrics_registry));
    let mut realizer = realize::Realizer::new(&workloads)
        .with_neighbour_netns(args.neighbour_netns.clone())
        .with_readdress_mode(args.readdress_mode)
        .with_old_neighbour_grace(std::time::Duration::from_millis(
            args.old_neighbour_grace_ms,
        ));
    let mut state_file = None;
    match &args.state_file {
        Some(path) => {
            // One file, one section per resource kind.
            let state = Arc::new(control::state::StateFile::open(path)?);
            realizer = realizer.with_state(state.clone())?;
            state_file = Some(state);
        }
        None if !workloads.is_empty() => tracing::warn!(
            "no --state-file: after a restart the agent does not recognise addresses it set before (a migration interrupted by the restart can leave the old address on a workload)"
        ),
        None => {}
    }
    let realizer = Arc::new(realizer);
    let registry = Arc::new(Registry::new(workloads));
    let queue = Arc::new(RecordQueue::new(args.queue_capacity, metrics.clone()));

    // The flow table and the records' baseline continue from a previous agent's pins, and
    // its links are taken over (datapath::pins).
    let pins = Pins::open(&pin_dir).context("the bpffs pin directory (--bpffs-dir)")?;
    // So are steering's maps and links: the steered connections keep their side (steer),
    // and the shadow taps': sampling goes on between agents (shadow::tap).
    let mut datapath = Datapath::load_pinned(
        FLOW_OBJECT,
        pins.clone(),
        &pins::PINNED_GROUPS,
        &[
            PROG_INGRESS,
            PROG_EGRESS,
            steer::PROG_ORIGIN,
            steer::PROG_RETURN,
            steer::PROG_TUNNEL,
            shadow::tap::PROG_TAP_IN,
            shadow::tap::PROG_TAP_OUT,
        ],
    )
    .context("the flow object")?;
    let flows: BpfHashMap<_, _, _> =
        BpfHashMap::try_from(datapath.take_map("FLOWS")?).context("FLOWS map")?;
    let reported: BpfHashMap<_, agent_common::FlowKey, agent_common::FlowStats> =
        BpfHashMap::try_from(datapath.take_map("FLOW_REPORTED")?).context("FLOW_REPORTED map")?;
    let baseline: Vec<_> = reported.iter().filter_map(Result::ok).collect();
    if !baseline.is_empty() {
        info!(
            flows = baseline.len(),
            "continuing the flows a previous agent reported"
        );
    }
    let events = RingBuf::try_from(datapath.take_map("FLOW_EVENTS")?).context("FLOW_EVENTS map")?;
    let payloads = RingBuf::try_from(datapath.take_map("PAYLOADS")?).context("PAYLOADS map")?;
    let payloads_lost =
        PerCpuArray::try_from(datapath.take_map("PAYLOADS_LOST")?).context("PAYLOADS_LOST map")?;
    let streams =
        RingBuf::try_from(datapath.take_map("STREAM_CHUNKS")?).context("STREAM_CHUNKS map")?;
    let streams_lost =
        PerCpuArray::try_from(datapath.take_map("STREAM_LOST")?).context("STREAM_LOST map")?;
    metrics
        .flow_map_capacity
        .set(agent_common::flow::FLOW_TABLE_ENTRIES as u64);
    let datapath = datapath.into_shared();
    let attacher = Attacher::new(
        datapath.clone(),
        args.interfaces.clone(),
        args.exclude.clone(),
        registry.clone(),
        metrics.clone(),
    )?
    .keeping_pins(args.keep_pins_on_exit);
    // One netlink listener for the agent; the attacher follows the links of this namespace.
    let host_events = HostEvents::start(hostevents::Config::default())
        .context("starting the netlink listener")?;
    metrics_registry.register_collector(Box::new(hostevents::StatsCollector(host_events.clone())));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics listener {}", args.metrics_listen))?;
    let metrics_app = crate::metrics::app(Arc::new(metrics_registry));
    let mut metrics_shutdown = shutdown_rx.clone();
    let metrics_task = tokio::spawn(async move {
        axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(async move {
                let _ = metrics_shutdown.changed().await;
            })
            .await
    });

    let stop_collector = Arc::new(AtomicBool::new(false));
    let collector = Collector {
        flows,
        events,
        payloads,
        payloads_lost,
        streams,
        streams_lost,
        tracker: FlowTracker::with_baseline(baseline),
        reported: Some(reported),
        l7: Default::default(),
        registry: registry.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        drain_interval: args.drain_interval(),
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        invalid_logged_at: None,
        invalid_since_log: 0,
    };
    let collector_thread = {
        let stop = stop_collector.clone();
        std::thread::Builder::new()
            .name("flow-collector".into())
            .spawn(move || collector.run(stop))
            .context("starting the collector thread")?
    };

    let link = controller_link::ControllerLink::new(
        &args.controller,
        &args.host_id,
        args.ca.as_ref(),
        args.cert.as_ref(),
        args.key.as_ref(),
        args.insecure,
    )?;
    // One instance id for the flow stream and the control stream.
    let instance = format!("{:016x}", rand::random::<u64>());
    let exporter = Exporter {
        controller: link.clone(),
        host_id: args.host_id.clone(),
        instance: instance.clone(),
        batch_size: args.batch_size.max(1),
        batch_max_bytes: args.batch_max_bytes.max(1),
        queue: queue.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        underlay_address: args.underlay_address,
        resend_buffer_bytes: args.resend_buffer_bytes,
    };
    let exporter_task = tokio::spawn(exporter.run(shutdown_rx.clone(), SHUTDOWN_GRACE));
    let attach_task = tokio::spawn(attacher.watch(host_events.clone(), shutdown_rx.clone()));
    // The same listener feeds the control driver: drift of what the reconcilers manage is
    // repaired as soon as it happens.
    let addresses = realize::AddressReconciler {
        realizer,
        metrics: control_metrics.clone(),
    };
    let (signal_tx, drift_signals) = tokio::sync::mpsc::channel(control::DRIFT_SIGNALS);
    // Shadow taps: programs after the flow observer on production nodes' interfaces.
    let taps = shadow::tap::TapEngine::new(
        datapath.clone(),
        tokio::runtime::Handle::current(),
        &args.host_id,
        Some(signal_tx.clone()),
        shadow_metrics,
    );
    let supervisor = {
        let mut cfg = weft_noderun::SupervisorConfig::new(&args.node_dir);
        cfg.cgroup_root = args.node_cgroup.clone();
        cfg.profiles = Some(
            weft_noderun::Profiles::with_overrides(args.node_profiles.as_deref())
                .context("the node profiles")?,
        );
        let supervisor = weft_noderun::Supervisor::new(cfg).context("the node supervisor")?;
        if let Some(why) = supervisor.unavailable() {
            // Observation, addresses, steering and taps do not need it: the agent runs,
            // and each network-node resource reports this as its failure.
            warn!(reason = why, "node processes cannot run on this host");
        }
        Arc::new(supervisor)
    };
    // The volume pool, made or mounted when a node first needs it (a node whose pool
    // cannot be made fails saying why).
    let volume_store = Arc::new(
        networks::cow::Store::lazy(networks::cow::PoolConfig {
            dir: args.volume_pool.clone(),
            bytes: args.volume_pool_bytes,
            kind: args.volume_store,
        })
        .with_flush(Some(std::time::Duration::from_millis(
            args.volume_pool_flush_ms,
        ))),
    );
    let networks = networks::Networks::new(
        networks::NetworksConfig {
            netns_prefix: args.node_netns_prefix.clone(),
            ..Default::default()
        },
        state_file,
        None,
    )
    .await
    .context("the network kinds")?;
    // Steering is optional: if its programs do not load (an older kernel), the agent runs
    // without it and reports steer resources as unsupported.
    let steering = match steer::Steering::new(
        datapath.clone(),
        steer::SteerSettings {
            netns_prefix: args.node_netns_prefix.clone(),
            // The running executable, even once an upgrade has replaced its file.
            router_runtime: steer::router::RouterRuntime::Process {
                exe: std::path::PathBuf::from("/proc/self/exe"),
                run_dir: args.router_run_dir.clone(),
            },
            ..Default::default()
        },
        Some(signal_tx.clone()),
        steer_metrics,
    )
    .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = format!("{e:#}"), "steering is not available");
            None
        }
    };
    let events = (args.drift_repair == config::DriftRepair::Events).then_some(host_events);
    let shadow_sinks = shadow::sink::SinkReconciler::new(
        shadow::sink::SinkConfig {
            underlay: args.underlay_address,
            netns_prefix: args.node_netns_prefix.clone(),
            limits: Default::default(),
        },
        signal_tx.clone(),
    )
    .with_supervisor(supervisor.clone());
    let mut control = control::driver::ControlDriver {
        controller: link.independent(),
        host_id: args.host_id.clone(),
        instance,
        // Segments before nodes: a node's bridge exists when the node is made.
        reconcilers: vec![
            Arc::new(addresses),
            Arc::new(networks::SegmentReconciler {
                networks: networks.clone(),
            }),
            Arc::new(
                networks::NodeReconciler::new(
                    networks,
                    signal_tx,
                    supervisor.clone(),
                    args.node_dir.clone(),
                )
                .with_workloads(registry.clone())
                .with_host_events(events.clone())
                .with_volume_store(Some(volume_store.clone())),
            ),
            Arc::new(shadow::tap_reconciler::ShadowTapReconciler {
                engine: taps.clone(),
                supervisor: Some(supervisor.clone()),
            }),
            // After the nodes: a sink's targets are node namespaces.
            Arc::new(shadow_sinks),
        ],
        events,
        signals: Some(drift_signals),
        metrics: control_metrics,
    };
    let steering_at_exit = steering.clone();
    if let Some(steering) = steering {
        // After the nodes: the steered nodes' interfaces exist when steering starts.
        control.reconcilers.push(Arc::new(steer::SteerReconciler {
            steering: steering.clone(),
        }));
        control
            .reconcilers
            .push(Arc::new(steer::SteerTargetReconciler { steering }));
    }
    let control_task = tokio::spawn(control.run(shutdown_rx.clone()));

    println!(
        "weft-agent started host_id={} controller={} metrics={}",
        args.host_id, args.controller, args.metrics_listen
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
        _ = term.recv() => info!("terminate: shutting down"),
    }

    // Order: stop reading the kernel (a last drain flushes every flow's counters), then let
    // the exporter hand the queue over within the grace period, then detach the programs.
    stop_collector.store(true, Relaxed);
    let joined = tokio::task::spawn_blocking(move || collector_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        error!("collector thread panicked");
    }
    let _ = shutdown_tx.send(true);
    let _ = exporter_task.await;
    let _ = control_task.await;
    // The taps go before the flow observer they are ordered after. Keeping the pins, they
    // stay in the kernel and their copies wait in the pinned ring for the next agent.
    let keep_pins = args.keep_pins_on_exit;
    tokio::task::spawn_blocking(move || {
        if keep_pins {
            taps.shutdown_keeping_pins(SHUTDOWN_GRACE);
        } else {
            taps.shutdown();
        }
    })
    .await
    .ok();
    match attach_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = format!("{e:#}"), "interface watcher failed"),
        Err(e) => error!(error = %e, "interface watcher panicked"),
    }
    if args.keep_pins_on_exit {
        info!(dir = %pins.dir().display(), "pins kept for the next agent");
    } else {
        // Nothing steers to the request routers once the pins are gone.
        if let Some(s) = steering_at_exit {
            s.stop_routers().await;
        }
        match pins.remove_all() {
            Ok(r) => {
                info!(dir = %pins.dir().display(), maps = r.maps, links = r.links, "pins removed")
            }
            Err(e) => error!(error = %e, "removing the pins"),
        }
    }
    let _ = metrics_task.await;
    if let Some(pool) = volume_store.pool()
        && let Err(e) = pool.unmount()
    {
        error!(error = %e, "unmounting the volume pool");
    }
    info!(
        sent = metrics.records_sent.get(),
        dropped = metrics.records_dropped.get(),
        "stopped"
    );
    Ok(())
}

/// `--cleanup`: stops every request router whose control socket is in `run_dir` (what a
/// stop that kept the pins, or a crash, left serving).
/// What they gave the servers' namespaces (for the clients' addresses) is removed too.
async fn stop_request_routers(run_dir: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(run_dir) else {
        return;
    };
    let mut stopped = 0;
    let mut sides = std::collections::BTreeSet::new();
    for e in dir.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "sock") {
            if let Some(served) = steer::router::process::stop_blocking(&path) {
                sides.extend([served.origin, served.target]);
            }
            stopped += 1;
        }
    }
    for side in sides {
        if let Err(e) = steer::router::transparent::undo(&side).await {
            eprintln!(
                "weft-agent cleanup: the request router's rules in {}: {e}",
                side.display()
            );
        }
    }
    println!(
        "weft-agent cleanup: stopped {stopped} request routers found in {}",
        run_dir.display()
    );
}

/// `--cleanup`: removes an agent's pins (detaching the programs in its pinned links).
fn cleanup(dir: &std::path::Path) -> anyhow::Result<()> {
    let Some(pins) = Pins::existing(dir) else {
        println!("weft-agent cleanup: nothing pinned in {}", dir.display());
        return Ok(());
    };
    let removed = pins
        .remove_all()
        .with_context(|| format!("removing the pins in {}", dir.display()))?;
    println!(
        "weft-agent cleanup: removed {} links and {} maps from {}",
        removed.links,
        removed.maps,
        dir.display()
    );
    Ok(())
}
