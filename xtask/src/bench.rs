//! `cargo xtask bench`: controller throughput and footprint (controller/benches/throughput.rs,
//! one process per section so that the memory figure starts from a clean heap) and the flow
//! programs' run time per packet (`BPF_PROG_TEST_RUN`, root only). Writes BENCHMARKS.md with
//! the date, the machine and the command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use weft_lab::cmd::describe;

use crate::sh;

/// One `RESULT <key> <value> <unit> <what>` line.
#[derive(Debug, Clone)]
struct Figure {
    value: f64,
    what: String,
}

fn parse_results(stdout: &str) -> BTreeMap<String, Figure> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("RESULT ")?;
            let mut parts = rest.splitn(4, ' ');
            let key = parts.next()?.to_string();
            let value = parts.next()?.parse().ok()?;
            let _unit = parts.next()?;
            let what = parts.next().unwrap_or_default().to_string();
            Some((key, Figure { value, what }))
        })
        .collect()
}

/// Runs `cmd` with stderr on the terminal; returns its stdout (printed too).
fn capture(cmd: &mut Command) -> Result<String> {
    println!("    $ {}", describe(cmd));
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(cmd), output.status);
    }
    Ok(stdout)
}

fn first_line(cmd: &mut Command) -> String {
    let (_, out) = sh::probe(cmd);
    out.lines().next().unwrap_or("unknown").trim().to_string()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

fn fmt_int(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the controller benches (controller/benches/throughput.rs, one process per section)
/// and collects their figures.
fn controller_figures() -> Result<BTreeMap<String, Figure>> {
    sh::step("controller benches (release): ingest, gRPC, memory, GET /topology");
    // Each section prints its figures with a baseline measured in the same run and the
    // ratio to it: the machine is shared, so absolute figures move between runs.
    sh::run_inherit(sh::cargo().args([
        "bench",
        "-p",
        "weft-controller",
        "--bench",
        "throughput",
        "--no-run",
    ]))?;
    let mut figures = BTreeMap::new();
    for section in ["memory", "mapper", "ingest", "grpc", "topology"] {
        let out = capture(sh::cargo().args([
            "bench",
            "-q",
            "-p",
            "weft-controller",
            "--bench",
            "throughput",
            "--",
            section,
        ]))?;
        figures.extend(parse_results(&out));
    }
    Ok(figures)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo xtask bench controller`: the controller benches alone (nothing else is built),
/// their section of BENCHMARKS.md ("## Controller", up to the next section) replaced with
/// the figures of this run, the rest of the file left as it is.
pub fn run_controller() -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let figures = controller_figures()?;
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let mut section = String::new();
    let _ = writeln!(
        section,
        "## Controller
"
    );
    let _ = writeln!(
        section,
        "Refreshed alone by `cargo xtask bench controller` ({date}, {} s; load average {load_before} before, {} after; {} CPUs, {}), which runs `cargo bench -p weft-controller --bench throughput -- <section>` once per section. Each figure stands beside a baseline measured in the same run and its target.\n",
        started.elapsed().as_secs(),
        loadavg(),
        first_line(&mut Command::new("nproc")),
        cpu_model(),
    );
    section.push_str(&render_controller(&figures));
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match old.find("## Controller\n") {
        Some(start) => {
            // The section ends at the next heading or at the next section's marker comment
            // (the flow programs' section begins with one, which must stay).
            let rest = &old[start + 1..];
            let end = [rest.find("\n## "), rest.find("\n<!-- ")]
                .into_iter()
                .flatten()
                .min()
                .map_or(old.len(), |i| start + 1 + i + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{old}\n{section}"),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "==> wrote the controller section of {} ({} figures, {} s)",
        path.display(),
        figures.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut figures: BTreeMap<String, Figure> = BTreeMap::new();

    figures.extend(controller_figures()?);

    let root = weft_lab::is_root();
    if root {
        sh::step(
            "flow programs: run time per packet (BPF_PROG_TEST_RUN), weft and the C reference",
        );
        figures.extend(flow_figures()?);
    } else {
        println!("    (not root: the BPF run-time figures are skipped)");
    }

    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let nproc = first_line(&mut Command::new("nproc"));
    let kernel = first_line(Command::new("uname").args(["-r"]));
    let rustc = first_line(Command::new("rustc").arg("--version"));
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = format!(
        "{} before, {} after (1/5/15 min; other work on the machine shows here)",
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let md = render(
        &figures,
        &load,
        &date,
        &nproc,
        &cpu_model(),
        &kernel,
        &rustc,
        root,
        started.elapsed().as_secs(),
    );
    let path = sh::root().join("BENCHMARKS.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "==> wrote {} ({} figures, {} s)",
        path.display(),
        figures.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    f: &BTreeMap<String, Figure>,
    load: &str,
    date: &str,
    nproc: &str,
    model: &str,
    kernel: &str,
    rustc: &str,
    root: bool,
    seconds: u64,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# weft benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` ({seconds} s). Re-run it to refresh; figures from one machine and one run, not a guarantee.\n"
    );
    let _ = writeln!(md, "- **Date**: {date}");
    let _ = writeln!(md, "- **Machine**: {nproc} CPUs, {model}, Linux {kernel}");
    let _ = writeln!(md, "- **Load average**: {load}");
    let _ = writeln!(md, "- **Toolchain**: {rustc}, release profile");
    let _ = writeln!(
        md,
        "- **Command**: `cargo xtask bench` (runs `cargo bench -p weft-controller --bench throughput -- <section>` once per section, then, as root, `cargo test --release -p weft-agent bench_run_time_per_packet -- --ignored --nocapture`, which builds the C reference of bench/flow-reference with clang)\n"
    );

    let _ = writeln!(md, "## Controller\n");
    md.push_str(&render_controller(f));

    md.push_str(&render_flows(f, root));
    md
}

const FLOWS_BEGIN: &str =
    "<!-- flows:begin (written by `cargo xtask bench` and `cargo xtask bench flows`) -->";
const FLOWS_END: &str = "<!-- flows:end -->";

/// The flow programs' section: weft's run time per packet beside the C reference's, and
/// bytes per flow entry, all from one run.
fn render_flows(f: &BTreeMap<String, Figure>, root: bool) -> String {
    let get = |key: &str| f.get(key).map(|x| x.value);
    let what = |key: &str| {
        f.get(key)
            .map(|x| x.what.clone())
            .unwrap_or_else(|| "not measured".into())
    };
    let mut md = String::new();
    let _ = writeln!(md, "{FLOWS_BEGIN}\n## Flow programs (kernel)\n");
    if !root {
        let _ = writeln!(md, "Not measured: loading BPF programs needs root.\n");
    } else {
        let _ = writeln!(
            md,
            "Run time per packet of weft's TC ingress program (the workload's host-side veth), timed by the kernel (`BPF_PROG_TEST_RUN`), against the C reference of the flow-overhead harness (bench/flow-reference: `tc_flow.c`, a parse + LRU hash of the 5-tuple + counters; `tc_count.c`, a bare per-CPU counter), built with clang and run on the same packets in the same run, interleaved (project rule: compare only within one run; the machine is shared, so absolute figures move between runs, ratios much less). Targets (issue 12): per packet at most the C reference's (ratio ≤ 1.00); at most 144 B per flow entry.\n"
        );
        let _ = writeln!(
            md,
            "| figure | weft | C flow reference | weft / C | C bare counter | target | how |\n|---|---|---|---|---|---|---|"
        );
        for (label, key, reference, counter, target) in [
            (
                "TCP data, established flow",
                "bpf_tcp_data_ns",
                "bpf_ref_tcp_data_ns",
                "bpf_count_tcp_data_ns",
                "weft / C ≤ 1.00",
            ),
            (
                "UDP datagram, known flow",
                "bpf_udp_ns",
                "bpf_ref_udp_ns",
                "bpf_count_udp_ns",
                "weft / C ≤ 1.00",
            ),
            (
                "SYN of a new connection",
                "bpf_new_syn_ns",
                "bpf_ref_new_syn_ns",
                "",
                "weft / C ≤ 1.00",
            ),
            (
                "(one-run timing baseline: data packet run once)",
                "bpf_single_run_data_ns",
                "bpf_ref_single_run_data_ns",
                "bpf_count_single_run_ns",
                "–",
            ),
            (
                "packet of a turn on a connection copied whole (HTTP/2), run once",
                "bpf_whole_turn_ns",
                "bpf_ref_single_run_data_ns",
                "",
                "–",
            ),
            (
                "packet of a turn on a sampled connection (HTTP/1.1), run once",
                "bpf_sampled_turn_ns",
                "bpf_ref_single_run_data_ns",
                "",
                "–",
            ),
        ] {
            let ns = |k: &str| get(k).map_or_else(|| "–".into(), |v| format!("{v:.0} ns"));
            let ratio = match (get(key), get(reference)) {
                (Some(w), Some(c)) if c > 0.0 => format!("**{:.2}**", w / c),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {ratio} | {} | {target} | {} |",
                ns(key),
                ns(reference),
                ns(counter),
                what(key)
            );
        }
        if let (Some(whole), Some(sampled)) = (get("bpf_whole_turn_ns"), get("bpf_sampled_turn_ns"))
            && sampled > 0.0
        {
            let _ = writeln!(
                md,
                "| copying a connection whole: HTTP/2 turn packet / HTTP/1.1 turn packet | **{:.2}** | – | – | – | – (the price of exact HTTP/2, gRPC and AMQP counts; other flows do not pay it) | the two rows above, measured interleaved |",
                whole / sampled
            );
        }
        if let Some(bytes) = get("flow_entry_bytes") {
            let reference = get("ref_flow_entry_bytes");
            let _ = writeln!(
                md,
                "| bytes per flow entry (key + value) | {bytes:.0} B | {} | {} | – | ≤ 144 B: {} | {} |",
                reference.map_or_else(|| "–".into(), |b| format!("{b:.0} B")),
                reference.map_or_else(|| "–".into(), |b| format!("{:.2}", bytes / b)),
                if bytes <= 144.0 { "met" } else { "not met" },
                what("flow_entry_bytes")
            );
        }
        if let Some(bytes) = get("flow_slot_kernel_bytes") {
            let reference = get("ref_flow_slot_kernel_bytes");
            let _ = writeln!(
                md,
                "| kernel bytes per flow slot (map memlock / max_entries) | {bytes:.0} B | {} | {} | – | – | {} |",
                reference.map_or_else(|| "–".into(), |b| format!("{b:.0} B")),
                reference.map_or_else(|| "–".into(), |b| format!("{:.2}", bytes / b)),
                what("flow_slot_kernel_bytes")
            );
        }
        let _ = writeln!(
            md,
            "\nThe SYN figures come from single runs (each new flow can only be new once), so they include the kernel's per-call timing overhead, which the one-run rows show (the bare counter's single run is almost only that overhead). weft does more per packet than the C reference (both directions in one entry, handshake RTT, request turns and latencies, payload samples at turns, flow-end events). `BPF_PROG_TEST_RUN` and bpf_stats on live traffic differ (the harness's live figures for the C reference: 87 ns UDP, 115–120 ns TCP, 154–170 ns on new connections): compare within a row.\n"
        );
    }
    let _ = writeln!(md, "{FLOWS_END}");
    md
}

/// The controller section's table and notes.
fn render_controller(f: &BTreeMap<String, Figure>) -> String {
    let get = |key: &str| f.get(key).map(|x| x.value);
    let what = |key: &str| {
        f.get(key)
            .map(|x| x.what.clone())
            .unwrap_or_else(|| "not measured".into())
    };
    let mut md = String::new();
    let _ = writeln!(md, "| figure | value | how |\n|---|---|---|");
    let row = |md: &mut String, label: &str, key: &str, value: String| {
        let _ = writeln!(md, "| {label} | {value} | {} |", what(key));
    };
    if let Some(rate) = get("mapper_observations_per_s") {
        row(
            &mut md,
            "library ingestion rate (spec API)",
            "mapper_observations_per_s",
            format!(
                "{} observations/s ({:.0} ns each)",
                fmt_int(rate),
                1e9 / rate
            ),
        );
    }
    if let Some(rate) = get("ingest_records_per_s") {
        row(
            &mut md,
            "ingestion of agent flow records (library)",
            "ingest_records_per_s",
            format!("{} records/s ({:.0} ns each)", fmt_int(rate), 1e9 / rate),
        );
    }
    if let Some(rate) = get("ingest_new_dependency_per_s") {
        row(
            &mut md,
            "ingestion, every record a new dependency",
            "ingest_new_dependency_per_s",
            format!(
                "{} records/s (target ≥ 300,000: {}); {} per second of thread CPU time; {:.2}× the rate of records updating a dependency, same run",
                fmt_int(rate),
                verdict(rate >= 300_000.0),
                fmt_int(get("ingest_new_dependency_per_cpu_s").unwrap_or(0.0)),
                get("ingest_new_over_update").unwrap_or(0.0)
            ),
        );
    }
    if let Some(rate) = get("grpc_records_per_s") {
        row(
            &mut md,
            "end to end: agent-side sender -> gRPC -> topology, connections accepted as main.rs does (TCP_NODELAY)",
            "grpc_records_per_s",
            format!(
                "{} records/s; {:.2}× the same batches pushed in-process (no socket), same run",
                fmt_int(rate),
                get("grpc_records_per_s_over_in_process").unwrap_or(0.0)
            ),
        );
    }
    if let Some(rate) = get("grpc_nagle_records_per_s") {
        row(
            &mut md,
            "end to end, server socket without TCP_NODELAY (not what the controller does)",
            "grpc_nagle_records_per_s",
            format!(
                "{} records/s; {:.2}× in-process",
                fmt_int(rate),
                get("grpc_nagle_records_per_s_over_in_process").unwrap_or(0.0)
            ),
        );
    }
    if let Some(rate) = get("grpc_in_process_records_per_s") {
        row(
            &mut md,
            "baseline: the same batches into AgentApi::push_flows in-process",
            "grpc_in_process_records_per_s",
            format!("{} records/s", fmt_int(rate)),
        );
    }
    if let Some(bytes) = get("memory_bytes_per_dependency") {
        row(
            &mut md,
            "controller memory per dependency",
            "memory_bytes_per_dependency",
            format!(
                "{} bytes RSS, {} bytes live heap (target ≤ 4,096: {}); RSS {:.0} MiB after; {:.2}× the old design's histograms alone ({} bytes), same run",
                fmt_int(bytes),
                fmt_int(get("memory_heap_bytes_per_dependency").unwrap_or(0.0)),
                verdict(bytes <= 4_096.0),
                get("memory_rss_mib").unwrap_or(0.0),
                get("memory_over_baseline").unwrap_or(0.0),
                fmt_int(get("memory_baseline_hdr_bytes_per_dependency").unwrap_or(0.0)),
            ),
        );
    }
    if let Some(ms) = get("topology_get_ms") {
        row(
            &mut md,
            "GET /topology, 10,000 services / 100,000 dependencies",
            "topology_get_ms",
            format!(
                "{ms:.0} ms (target ≤ 200: {}); {:.2}× serializing the built snapshot alone ({:.0} ms), same run",
                verdict(ms <= 200.0),
                get("topology_get_over_serialize").unwrap_or(0.0),
                get("topology_serialize_ms").unwrap_or(0.0),
            ),
        );
    }
    let _ = writeln!(md);
    if get("memory_bytes_per_dependency").is_some() {
        let _ = writeln!(
            md,
            "The memory figure is for dependencies seen within one minute (one time bucket each, which is then also their total). A dependency keeps a bucket per minute it is seen in, for the retention (24 h by default); each bucket holds its counters, its request groups and 8 bytes per latency bucket in use, so a dependency busy all day holds far more than this figure.",
        );
    }
    if let (Some(wall), Some(cpu)) = (get("topology_get_ms"), get("topology_get_cpu_ms")) {
        let _ = writeln!(
            md,
            "GET /topology took {wall:.0} ms of wall time and {cpu:.0} ms of the serving thread's CPU time (the difference is waiting for a CPU on this shared machine); serializing the built snapshot with serde_json alone took {:.0} ms of CPU time in the same run.",
            get("topology_serialize_cpu_ms").unwrap_or(0.0)
        );
    }
    let library = get("mapper_observations_per_s")
        .map(|r| (r, "observations through the spec's API (TopologyMapper)"));
    let agent = get("ingest_records_per_s")
        .map(|r| (r, "agent flow records (each carrying several requests)"));
    if let Some((rate, what)) = library.or(agent) {
        let _ = writeln!(
            md,
            "Against the claims: topomapper.md says about 0.1 ms per observation (10,000/s); weft ingests {} {what} per second on one core, {:.0}x that. weft's aim is 1,000,000/s on one core: {}.",
            fmt_int(rate),
            rate / 10_000.0,
            if rate >= 1e6 { "met" } else { "not met" }
        );
        if let (Some(fresh), Some(ratio)) = (
            get("ingest_new_dependency_per_s"),
            get("ingest_new_over_update"),
        ) {
            let _ = writeln!(
                md,
                "A record that creates a dependency ({} records/s) costs {:.1}× one that updates it: its service, key and statistics are allocated then.",
                fmt_int(fresh),
                1.0 / ratio.max(f64::MIN_POSITIVE)
            );
        }
        let _ = writeln!(md);
    }

    md
}

/// Runs the flow-program benchmark (root: it loads BPF programs); returns its figures.
fn flow_figures() -> Result<BTreeMap<String, Figure>> {
    let out = capture(sh::cargo().args([
        "test",
        "-q",
        "--release",
        "-p",
        "weft-agent",
        "bench_run_time_per_packet",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]))?;
    Ok(parse_results(&out))
}

/// `cargo xtask bench flows`: only the flow programs' section of BENCHMARKS.md (weft's
/// programs against the C reference in one run, bytes per flow entry).
pub fn run_flows_only() -> Result<()> {
    if !weft_lab::is_root() {
        bail!("the flow-program benchmark loads BPF programs: run it as root");
    }
    let load_before = loadavg();
    sh::step("flow programs: run time per packet (BPF_PROG_TEST_RUN), weft and the C reference");
    let figures = flow_figures()?;
    let load_after = loadavg();
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let nproc = first_line(&mut Command::new("nproc"));
    let kernel = first_line(Command::new("uname").args(["-r"]));
    let mut section = render_flows(&figures, true);
    let header = format!(
        "## Flow programs (kernel)\n\n- **Date**: {date}\n- **Machine**: {nproc} CPUs, {}, Linux {kernel}\n- **Load average** (1/5/15 min): {} before, {} after (other work on the machine shows here)\n- **Command**: `cargo xtask bench flows` (`cargo test --release -p weft-agent bench_run_time_per_packet -- --ignored --nocapture --test-threads 1`; also part of `cargo xtask bench`)\n",
        cpu_model(),
        load_before,
        load_after
    );
    section = section.replacen("## Flow programs (kernel)\n", &header, 1);
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(FLOWS_BEGIN), old.find(FLOWS_END)) {
        // The section ends with the end marker and a newline; one blank line after it.
        (Some(b), Some(e)) if e > b => format!(
            "{}{}\n{}",
            &old[..b],
            section,
            old[e + FLOWS_END.len()..].trim_start_matches('\n')
        ),
        // A file written before the markers: the section runs to the next section marker.
        _ => match old.find("## Flow programs (kernel)") {
            Some(b) => {
                let rest = &old[b..];
                let e = rest.find("<!-- ").map_or(old.len(), |e| b + e);
                format!("{}{}{}", &old[..b], section, &old[e..])
            }
            None => format!("{}\n\n{section}", old.trim_end()),
        },
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote the flow programs' section of {}", path.display());
    Ok(())
}
