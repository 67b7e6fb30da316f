//! pilotfish's command line: Envoy's, so pilotfish starts where Envoy is started
//! (pilot-agent's command line included), plus a few flags and subcommands of its own.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Parser, Subcommand, ValueEnum};
use pilotfish::{
    admin::config_dump,
    app, bootstrap, demo,
    logging::{self, LogFormat, LogLevel},
};

#[derive(Parser, Debug)]
#[command(
    name = "pilotfish",
    about = "A sidecar data-plane proxy, configured like Envoy",
    disable_version_flag = true
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
    /// Traffic worker threads (default: the cgroup CPU quota, else 2; 0 means 1).
    #[arg(long)]
    concurrency: Option<usize>,
    /// trace, debug, info, warning, error, critical or off, for every logger.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// Levels of single loggers, Envoy's names: `misc:error,upstream:debug`.
    #[arg(long = "component-log-level", value_name = "LOGGER:LEVEL,...")]
    component_log_level: Option<String>,
    /// The log line pattern (spdlog flags as Envoy's: %Y-%m-%dT%T.%fZ %l %n %v …).
    /// Refused together with the bootstrap's application_log_config, as in Envoy.
    #[arg(long = "log-format")]
    log_format: Option<String>,
    /// Write the application log to this file instead of stderr.
    #[arg(long = "log-path", value_name = "FILE")]
    log_path: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,
    /// Seconds to drain connections on SIGTERM (and for a graceful /drain_listeners).
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// immediate or gradual (Envoy's): pilotfish drains every connection at the start
    /// of the drain period either way (as `immediate`).
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    drain_strategy: DrainStrategy,
    /// Overrides node.id, as Envoy's --service-node.
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Overrides node.cluster, as Envoy's --service-cluster.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Overrides node.locality.zone, as Envoy's --service-zone.
    #[arg(long = "service-zone")]
    service_zone: Option<String>,
    /// v4 or v6: the family of the server's local address (checked; pilotfish derives
    /// nothing from it).
    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    local_address_ip_version: IpVersion,
    /// How long access-log lines may wait before they are written (Envoy's default,
    /// 10 000; 64 KiB of lines are written at once; 0: each line at once).
    #[arg(long = "file-flush-interval-msec", value_name = "MS")]
    file_flush_interval_msec: Option<u64>,
    /// Access-log lines are written at once when this many KiB wait (Envoy's default 64).
    #[arg(long = "file-flush-min-size-kb", value_name = "KB")]
    file_flush_min_size_kb: Option<u64>,
    /// Fields that are no part of Envoy's API are dropped with a warning (counted in
    /// server.static_unknown_fields) instead of failing the bootstrap.
    #[arg(long = "allow-unknown-static-fields", alias = "allow-unknown-fields")]
    allow_unknown_static_fields: bool,
    /// Fixed tags added to every stat: `name:value` (repeatable).
    #[arg(long = "stats-tag", value_name = "NAME:VALUE")]
    stats_tag: Vec<String>,
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
    /// Print the version in Envoy's format and exit.
    #[arg(long = "version")]
    version: bool,
    /// Print the hot restart compatibility version (`disabled`: pilotfish has no hot
    /// restart) and exit.
    #[arg(long = "hot-restart-version")]
    hot_restart_version: bool,
    // Envoy flags about hot restart, core dumps and logging details. pilotfish has no
    // hot restart (a new process takes over by SO_REUSEPORT and the drain); these are
    // accepted so pilotfish starts wherever Envoy is started, and shown in /server_info.
    #[arg(long = "disable-hot-restart", hide = true)]
    disable_hot_restart: bool,
    #[arg(long = "restart-epoch", hide = true, default_value_t = 0)]
    restart_epoch: u32,
    #[arg(long = "parent-shutdown-time-s", hide = true, default_value_t = 900)]
    parent_shutdown_time_s: u64,
    #[arg(long = "base-id", hide = true, default_value_t = 0)]
    base_id: u64,
    #[arg(long = "use-dynamic-base-id", hide = true)]
    use_dynamic_base_id: bool,
    #[arg(long = "base-id-path", hide = true)]
    base_id_path: Option<PathBuf>,
    #[arg(
        long = "socket-path",
        hide = true,
        default_value = "@envoy_domain_socket"
    )]
    socket_path: String,
    #[arg(long = "socket-mode", hide = true, default_value_t = 0)]
    socket_mode: u32,
    #[arg(long = "skip-deprecated-logs", hide = true)]
    skip_deprecated_logs: bool,
    #[arg(long = "enable-core-dump", hide = true)]
    enable_core_dump: bool,
    #[arg(long = "log-format-escaped", hide = true)]
    log_format_escaped: bool,
    #[arg(long = "enable-fine-grain-logging", hide = true)]
    enable_fine_grain_logging: bool,
    #[arg(long = "cpuset-threads", hide = true)]
    cpuset_threads: bool,
    #[arg(long = "reject-unknown-dynamic-fields", hide = true)]
    reject_unknown_dynamic_fields: bool,
    #[arg(long = "ignore-unknown-dynamic-fields", hide = true)]
    ignore_unknown_dynamic_fields: bool,
    #[arg(long = "disable-extensions", hide = true)]
    disable_extensions: Option<String>,
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
    /// Load the config, bind the admin port, exit 0 (Envoy's `init_only`).
    #[value(name = "init_only")]
    InitOnly,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DrainStrategy {
    Immediate,
    Gradual,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum IpVersion {
    V4,
    V6,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        let argv0 = std::env::args()
            .next()
            .unwrap_or_else(|| "pilotfish".into());
        print!("\n{argv0}  version: {}\n\n", pilotfish::admin::version());
        return ExitCode::SUCCESS;
    }
    if cli.hot_restart_version {
        print!("disabled");
        return ExitCode::SUCCESS;
    }
    let demo = matches!(cli.command, Some(Sub::Demo { .. }));
    let (path, validate) = match &cli.command {
        Some(Sub::Demo { keep_running }) => {
            // The demo's story is on stdout; only problems go to its log.
            let _ = logging::init(
                LogLevel::Warning,
                &[],
                LogFormat::Text(logging::DEFAULT_FORMAT.into()),
                None,
            );
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
    debug_assert!(!demo);
    let Some(level) = LogLevel::parse(&cli.log_level) else {
        eprintln!("error: invalid log level specified '{}'", cli.log_level);
        return ExitCode::FAILURE;
    };
    let components = match cli
        .component_log_level
        .as_deref()
        .map(logging::parse_components)
        .transpose()
    {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load_opts = bootstrap::LoadOptions {
        allow_unknown_fields: cli.allow_unknown_static_fields,
        node_id: cli.service_node.clone(),
        node_cluster: cli.service_cluster.clone(),
        node_zone: cli.service_zone.clone(),
    };
    let stats_tags = match fixed_tags(&cli.stats_tag) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = bootstrap::on_decode_thread(|| {
        let mut loaded = bootstrap::load(path.as_deref(), cli.config_yaml.as_deref(), &load_opts)?;
        if !stats_tags.is_empty() {
            loaded.add_fixed_tags(&stats_tags)?;
        }
        let dump =
            (!validate).then(|| config_dump::StaticDump::new(&loaded.proto, SystemTime::now()));
        Ok::<_, String>((loaded, dump))
    });
    let (loaded, config_dump) = match loaded {
        Ok(l) => l,
        Err(e) => {
            let _ = logging::init(level, &components, default_format(&cli), None);
            eprintln!("error initializing configuration '{}': {e}", shown(&path));
            return ExitCode::FAILURE;
        }
    };
    let format = match (&cli.log_format, &loaded.config.server.log_format) {
        (Some(_), Some(_)) => {
            eprintln!(
                "error initializing configuration '{}': Only one of \
                 ApplicationLogConfig.log_format or CLI option --log-format can be specified.",
                shown(&path)
            );
            return ExitCode::FAILURE;
        }
        (_, Some(f)) => f.clone(),
        (_, None) => default_format(&cli),
    };
    if let Err(e) = logging::init(level, &components, format, cli.log_path.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for f in &loaded.unknown_fields {
        tracing::warn!("Unknown field: {f} (ignored: --allow-unknown-static-fields)");
    }
    let Some(config_dump) = config_dump else {
        println!("configuration '{}' OK", shown(&path));
        return ExitCode::SUCCESS;
    };
    let bootstrap::Loaded {
        mut config,
        is_default,
        unknown_fields,
        ..
    } = loaded;

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
    let concurrency = match cli.concurrency {
        Some(0) => 1,
        Some(n) => n,
        None => app::default_concurrency(),
    };
    let opts = app::Options {
        concurrency,
        drain_time: Duration::from_secs(cli.drain_time_s),
        stats_addr: port(cli.stats_port, 15090),
        health_addr: port(cli.health_port, 15021),
        admin_address_path: cli.admin_address_path.clone(),
        command_line: command_line(&cli, concurrency),
        flush_interval: Duration::from_millis(cli.file_flush_interval_msec.unwrap_or(10_000)),
        flush_size: cli
            .file_flush_min_size_kb
            .map_or(pilotfish::telemetry::access_log::FLUSH_SIZE, |kb| {
                usize::try_from(kb.saturating_mul(1024)).unwrap_or(usize::MAX)
            }),
        unknown_static_fields: unknown_fields.len() as u64,
        init_only: cli.mode == Mode::InitOnly,
    };
    match app::run(config, config_dump, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilotfish: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_format(cli: &Cli) -> LogFormat {
    LogFormat::Text(
        cli.log_format
            .clone()
            .unwrap_or_else(|| logging::DEFAULT_FORMAT.into()),
    )
}

/// `--stats-tag name:value`, as Envoy checks it.
fn fixed_tags(tags: &[String]) -> Result<Vec<(String, String)>, String> {
    tags.iter()
        .map(|t| {
            t.split_once(':')
                .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--stats-tag '{t}' is not name:value"))
        })
        .collect()
}

/// `/server_info`'s `command_line_options`, Envoy's names and spellings.
fn command_line(cli: &Cli, concurrency: usize) -> serde_json::Value {
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "base_id": cli.base_id.to_string(),
        "concurrency": concurrency,
        "config_path": path(&cli.config_path),
        "config_yaml": cli.config_yaml.clone().unwrap_or_default(),
        "allow_unknown_static_fields": cli.allow_unknown_static_fields,
        "admin_address_path": path(&cli.admin_address_path),
        "local_address_ip_version": match cli.local_address_ip_version { IpVersion::V4 => "v4", IpVersion::V6 => "v6" },
        "log_level": cli.log_level,
        "component_log_level": cli.component_log_level.clone().unwrap_or_default(),
        "log_format": cli.log_format.clone().unwrap_or_else(|| logging::DEFAULT_FORMAT.into()),
        "log_path": path(&cli.log_path),
        "service_cluster": cli.service_cluster.clone().unwrap_or_default(),
        "service_node": cli.service_node.clone().unwrap_or_default(),
        "service_zone": cli.service_zone.clone().unwrap_or_default(),
        "file_flush_interval": format!("{}s", cli.file_flush_interval_msec.unwrap_or(10_000) as f64 / 1000.0),
        "drain_time": format!("{}s", cli.drain_time_s),
        "parent_shutdown_time": format!("{}s", cli.parent_shutdown_time_s),
        "mode": match cli.mode { Mode::Serve => "Serve", Mode::Validate => "Validate", Mode::InitOnly => "InitOnly" },
        "disable_hot_restart": cli.disable_hot_restart,
        "restart_epoch": cli.restart_epoch,
        "cpuset_threads": cli.cpuset_threads,
        "reject_unknown_dynamic_fields": cli.reject_unknown_dynamic_fields,
        "log_format_escaped": cli.log_format_escaped,
        "disabled_extensions": cli.disable_extensions.as_deref().map(|d| d.split(',').collect::<Vec<_>>()).unwrap_or_default(),
        "ignore_unknown_dynamic_fields": cli.ignore_unknown_dynamic_fields,
        "use_dynamic_base_id": cli.use_dynamic_base_id,
        "base_id_path": path(&cli.base_id_path),
        "drain_strategy": match cli.drain_strategy { DrainStrategy::Immediate => "Immediate", DrainStrategy::Gradual => "Gradual" },
        "enable_fine_grain_logging": cli.enable_fine_grain_logging,
        "socket_path": cli.socket_path,
        "socket_mode": cli.socket_mode,
        "enable_core_dump": cli.enable_core_dump,
        "stats_tag": cli.stats_tag,
        "skip_deprecated_logs": cli.skip_deprecated_logs,
        "file_flush_min_size": cli.file_flush_min_size_kb.unwrap_or(0) * 1024,
    })
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<embedded default>".into())
}
