//! pilotfish's command line, shaped like Envoy's where they overlap so pilotfish can be
//! started where Envoy is started.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Parser, Subcommand, ValueEnum};
use pilotfish::{admin::config_dump, app, bootstrap, demo};

#[derive(Parser, Debug)]
#[command(
    name = "pilotfish",
    version,
    about = "A sidecar data-plane proxy, configured like Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Envoy bootstrap (YAML, JSON or binary .pb). Without it (and without
    /// --config-yaml) pilotfish runs its embedded sidecar default.
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<PathBuf>,
    /// Bootstrap YAML merged over the file, as Envoy's --config-yaml.
    #[arg(long = "config-yaml", value_name = "YAML")]
    config_yaml: Option<String>,
    /// Traffic worker threads (default: the cgroup CPU quota, else 2).
    #[arg(long)]
    concurrency: Option<usize>,
    /// trace, debug, info, warning, error, critical or off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,
    /// Seconds to drain connections on SIGTERM before exiting.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// Sets node.id, as Envoy's --service-node.
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Sets node.cluster, as Envoy's --service-cluster.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Port of the Prometheus stats server (0 disables). Default: 15090 on the
    /// embedded default, off with -c (stats stay on the admin port).
    #[arg(long = "stats-port")]
    stats_port: Option<u16>,
    /// Port of the health server (/healthz/ready; 0 disables). Default: 15021 on the
    /// embedded default, off with -c.
    #[arg(long = "health-port")]
    health_port: Option<u16>,
    /// Set this SO_MARK on every upstream socket whose cluster sets none (needs
    /// CAP_NET_ADMIN). An alternative to running as uid 1337 for keeping pilotfish's own
    /// connections out of iptables capture: exclude the mark in the rules.
    #[arg(long = "upstream-mark", value_name = "MARK")]
    upstream_mark: Option<u32>,
    /// Write the admin server's address to this file once it is bound.
    #[arg(long = "admin-address-path", value_name = "FILE")]
    admin_address_path: Option<PathBuf>,
    // Envoy flags Istio's agent passes, accepted so pilotfish starts where Envoy does.
    // They change nothing that pilotfish does.
    #[arg(long = "drain-strategy", hide = true)]
    _drain_strategy: Option<String>,
    #[arg(long = "local-address-ip-version", hide = true)]
    _local_address_ip_version: Option<String>,
    #[arg(long = "file-flush-interval-msec", hide = true)]
    _file_flush_interval_msec: Option<u64>,
    #[arg(long = "disable-hot-restart", hide = true)]
    _disable_hot_restart: bool,
    #[arg(long = "log-format", hide = true)]
    _log_format: Option<String>,
    #[arg(long = "component-log-level", hide = true)]
    _component_log_level: Option<String>,
    #[arg(long = "parent-shutdown-time-s", hide = true)]
    _parent_shutdown_time_s: Option<u64>,
    #[arg(long = "restart-epoch", hide = true)]
    _restart_epoch: Option<u64>,
    #[arg(long = "base-id", hide = true)]
    _base_id: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Check a bootstrap and exit: 0 if pilotfish would run it.
    Validate { file: PathBuf },
    /// Run pilotfish in front of two local versions of a service and show a canary
    /// split, a header match, a prefix rewrite and injected faults.
    Demo {
        /// Keep everything running after the traffic, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Serve,
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's story is on stdout; only problems go to its log.
    let demo = matches!(cli.command, Some(Sub::Demo { .. }));
    init_logging(if demo { "warning" } else { &cli.log_level });

    let (path, validate) = match &cli.command {
        Some(Sub::Demo { keep_running }) => {
            return match demo::run(demo::Options {
                keep_running: *keep_running,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pilotfish demo: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Sub::Validate { file }) => (Some(file.clone()), true),
        None => (cli.config_path.clone(), cli.mode == Mode::Validate),
    };
    let loaded = bootstrap::on_decode_thread(|| {
        let mut loaded = bootstrap::load(path.as_deref(), cli.config_yaml.as_deref())?;
        if let Some(id) = &cli.service_node {
            loaded.config.node.id = id.clone();
            loaded.proto.node.get_or_insert_default().id = id.clone();
        }
        if let Some(c) = &cli.service_cluster {
            loaded.config.node.cluster = c.clone();
            loaded.proto.node.get_or_insert_default().cluster = c.clone();
        }
        let dump =
            (!validate).then(|| config_dump::StaticDump::new(&loaded.proto, SystemTime::now()));
        Ok::<_, String>((loaded.config, loaded.is_default, dump))
    });
    let (mut config, is_default, config_dump) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error initializing configuration '{}': {e}", shown(&path));
            return ExitCode::FAILURE;
        }
    };
    let Some(config_dump) = config_dump else {
        println!("configuration '{}' OK", shown(&path));
        return ExitCode::SUCCESS;
    };

    if let Some(mark) = cli.upstream_mark {
        for c in &mut config.clusters {
            c.upstream_socket.mark.get_or_insert(mark);
        }
    }

    let port = |flag: Option<u16>, default: u16| -> Option<SocketAddr> {
        match flag.or(is_default.then_some(default)) {
            Some(0) | None => None,
            Some(p) => Some(SocketAddr::from(([0, 0, 0, 0], p))),
        }
    };
    let opts = app::Options {
        concurrency: cli.concurrency.unwrap_or_else(app::default_concurrency),
        drain_time: Duration::from_secs(cli.drain_time_s),
        stats_addr: port(cli.stats_port, 15090),
        health_addr: port(cli.health_port, 15021),
        admin_address_path: cli.admin_address_path.clone(),
    };
    match app::run(config, config_dump, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilotfish: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<embedded default>".into())
}

fn init_logging(level: &str) {
    let level = match level {
        "warning" => "warn",
        "critical" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("pilotfish={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pilotfish=info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
