//! The shard manager's flags of `weft-controller` (flattened into its arguments).

use std::time::Duration;

use agent_common::time::parse_duration;

use weft_shards::cidr::Cidr;
use weft_shards::model::ShardConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct ShardArgs {
    /// Prefix shards are carved from (repeat for several; IPv4 and IPv6). Shards are
    /// IPv4 /20../28 or IPv6 /116../124 (the same address counts), default /22 and /118.
    #[arg(long = "shard-pool", value_name = "CIDR", default_values_t = ["198.18.128.0/17".to_owned(), "fd00:80::/56".to_owned()])]
    pub pools: Vec<String>,
    /// Range no shard may overlap (repeat for several).
    #[arg(long = "shard-reserved", value_name = "CIDR")]
    pub reserved: Vec<String>,
    /// Most shards one network may hold.
    #[arg(long, default_value_t = 16)]
    pub max_shards_per_network: usize,
    /// How long a migration waits for an agent to report a re-addressed workload before
    /// it pauses (and retries).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub migration_timeout: Duration,
    /// Fail a migration not completed this long after it started (e.g. 30m): its
    /// unfinished moves are rolled back, as `POST /migrations/{id}/cancel` does. Without
    /// it, a migration retries until its agents answer.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub migration_deadline: Option<Duration>,
    /// Workloads of one migration re-addressed at once. Each re-address makes the
    /// hypervisor and the workload resolve addresses again (and, taking the link down,
    /// renews its IPv6 and bridge state): a smaller burst disturbs the other workloads of
    /// the host less. 256 workloads on one 2-CPU hypervisor: 16 kept every window under
    /// 30 ms (make-before-break) where 64 gave 44-58 ms, and all moved within 1.2 s.
    #[arg(long, default_value_t = 16)]
    pub migration_concurrency: usize,
    /// Events of the log (`GET /events`: shards, addresses, topology, networks) kept in
    /// the store for consumers that resume.
    #[arg(long, default_value_t = 100_000)]
    pub event_retention: u64,
}

impl ShardArgs {
    pub fn config(&self) -> Result<ShardConfig, String> {
        let parse = |flag: &str, values: &[String]| {
            values
                .iter()
                .map(|v| v.parse::<Cidr>().map_err(|e| format!("--{flag}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let pools = parse("shard-pool", &self.pools)?;
        for (i, a) in pools.iter().enumerate() {
            if let Some(b) = pools[i + 1..].iter().find(|b| b.overlaps(a)) {
                return Err(format!(
                    "--shard-pool: {a} overlaps {b}; give each address range once"
                ));
            }
        }
        if self.max_shards_per_network == 0 {
            return Err("--max-shards-per-network must be at least 1".into());
        }
        if self.migration_concurrency == 0 {
            return Err("--migration-concurrency must be at least 1".into());
        }
        if self.migration_timeout.is_zero() {
            return Err("--migration-timeout must be more than 0".into());
        }
        if self.migration_deadline.is_some_and(|d| d.is_zero()) {
            return Err(
                "--migration-deadline must be more than 0 (leave it out for no deadline)".into(),
            );
        }
        Ok(ShardConfig {
            pools,
            reserved: parse("shard-reserved", &self.reserved)?,
            max_shards_per_network: self.max_shards_per_network,
            migration_timeout: self.migration_timeout,
            migration_deadline: self.migration_deadline,
            migration_concurrency: self.migration_concurrency,
            event_retention: self.event_retention.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        shards: ShardArgs,
    }

    fn config(args: &[&str]) -> Result<ShardConfig, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("weft-controller").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        cli.shards.config()
    }

    #[test]
    fn migration_deadline_is_off_unless_given_and_never_zero() {
        assert_eq!(config(&[]).unwrap().migration_deadline, None);
        assert_eq!(
            config(&["--migration-deadline", "30m"])
                .unwrap()
                .migration_deadline,
            Some(Duration::from_secs(1_800))
        );
        let zero = config(&["--migration-deadline", "0s"]).unwrap_err();
        assert!(
            zero.contains("--migration-deadline must be more than 0"),
            "{zero}"
        );
        let bad = config(&["--migration-deadline", "soon"]).unwrap_err();
        assert!(bad.contains("not a duration"), "{bad}");
    }
}
