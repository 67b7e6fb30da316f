//! The application log as Envoy's is driven: a level per Envoy logger (`-l`,
//! `--component-log-level misc:error`, admin `/logging`), lines in an spdlog pattern
//! (`--log-format`, or the bootstrap's `application_log_config` as text or JSON, which
//! is how pilot-agent asks for Istio's format), to stderr or `--log-path`.
//!
//! pilotfish's modules map onto Envoy's logger names (`upstream`, `router`, `admin` …);
//! a line's `%n` is that name, and a logger's level applies to the modules mapped to it.
use crate::sync::MutexExt;
use std::{
    fmt,
    io::Write,
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter, Registry,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt,
};

/// Envoy 1.40's loggers, in the order its `/logging` lists them.
pub const LOGGERS: &[&str] = &[
    "a2a",
    "admin",
    "ai_protocol_manager",
    "alternate_protocols_cache",
    "aws",
    "assert",
    "backtrace",
    "basic_auth",
    "cache_filter",
    "client",
    "config",
    "connection",
    "conn_handler",
    "compression",
    "credential_injector",
    "decompression",
    "dns",
    "dubbo",
    "envoy_bug",
    "ext_authz",
    "ext_proc",
    "rocketmq",
    "file",
    "filter",
    "forward_proxy",
    "geolocation",
    "grpc",
    "happy_eyeballs",
    "hc",
    "health_checker",
    "http",
    "http2",
    "hystrix",
    "init",
    "io",
    "jwt",
    "json_rpc",
    "kafka",
    "key_value_store",
    "lua",
    "local_rate_limit",
    "main",
    "matcher",
    "mcp",
    "misc",
    "mongo",
    "multi_connection",
    "notification",
    "oauth2",
    "quic",
    "quic_stream",
    "pool",
    "rate_limit_quota",
    "rbac",
    "rds",
    "redis",
    "router",
    "runtime",
    "stats",
    "secret",
    "sse",
    "tap",
    "testing",
    "thrift",
    "tracing",
    "upstream",
    "udp",
    "wasm",
    "websocket",
    "golang",
    "stats_sinks",
    "dynamic_modules",
    "ip_tagging",
];

/// pilotfish's modules and the Envoy logger each logs as (most specific first).
const MODULES: &[(&str, &str)] = &[
    ("pilotfish::http::router", "router"),
    ("pilotfish::http::filters", "filter"),
    ("pilotfish::http", "http"),
    ("pilotfish::upstream::http_pool", "pool"),
    ("pilotfish::upstream::dns", "dns"),
    ("pilotfish::upstream", "upstream"),
    ("pilotfish::listener", "conn_handler"),
    ("pilotfish::net", "connection"),
    ("pilotfish::tcp", "filter"),
    ("pilotfish::xds", "config"),
    ("pilotfish::config", "config"),
    ("pilotfish::admin", "admin"),
    ("pilotfish::telemetry::access_log", "file"),
    ("pilotfish::telemetry", "stats"),
    ("pilotfish::runtime", "runtime"),
    ("pilotfish::app", "main"),
    ("pilotfish::workers", "main"),
    ("pilotfish::drain", "main"),
    ("pilotfish", "misc"),
];

/// The Envoy logger a tracing target logs as.
pub fn logger_of(target: &str) -> &'static str {
    MODULES
        .iter()
        .find(|(m, _)| target == *m || target.starts_with(&format!("{m}::")))
        .map_or("misc", |(_, l)| l)
}

/// Envoy's level names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" | "warn" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            "off" => LogLevel::Off,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Off => "off",
        }
    }

    /// The tracing filter level (critical is error: tracing has nothing above it).
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
            LogLevel::Off => "off",
        }
    }
}

/// `--component-log-level a:b,c:d`, checked as Envoy checks it.
pub fn parse_components(spec: &str) -> Result<Vec<(String, LogLevel)>, String> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (name, level) = part
                .split_once(':')
                .ok_or_else(|| format!("component log level not correctly specified '{part}'"))?;
            if !LOGGERS.contains(&name) {
                return Err(format!("invalid component specified '{name}'"));
            }
            let level = LogLevel::parse(level)
                .ok_or_else(|| format!("invalid log level specified '{level}'"))?;
            Ok((name.to_owned(), level))
        })
        .collect()
}

/// How lines are written.
#[derive(Debug, Clone)]
pub enum LogFormat {
    /// An spdlog pattern.
    Text(String),
    /// `application_log_config.log_format.json_format`: keys and their values, each a
    /// pattern (strings) or a literal (numbers, booleans).
    Json(serde_json::Map<String, serde_json::Value>),
}

/// Envoy's default pattern.
pub const DEFAULT_FORMAT: &str = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

struct Levels {
    by_logger: Vec<LogLevel>,
}

static LEVELS: Mutex<Option<Levels>> = Mutex::new(None);
static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process's logger. `level` applies to every logger, then `components`.
pub fn init(
    level: LogLevel,
    components: &[(String, LogLevel)],
    format: LogFormat,
    path: Option<&std::path::Path>,
) -> Result<(), String> {
    let mut levels = Levels {
        by_logger: vec![level; LOGGERS.len()],
    };
    for (name, l) in components {
        if let Some(i) = LOGGERS.iter().position(|n| n == name) {
            levels.by_logger[i] = *l;
        }
    }
    let (filter, handle) = reload::Layer::new(levels.filter());
    *LEVELS.locked() = Some(levels);
    let writer: Box<dyn Fn() -> Box<dyn Write> + Send + Sync> = match path {
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--log-path {}: {e}", p.display()))?;
            let file = std::sync::Arc::new(Mutex::new(file));
            Box::new(move || Box::new(Shared(file.clone())))
        }
        None => Box::new(|| Box::new(std::io::stderr())),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(Pattern { format })
        .with_writer(writer);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| e.to_string())?;
    let _ = RELOAD.set(handle);
    Ok(())
}

struct Shared(std::sync::Arc<Mutex<std::fs::File>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.locked().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.locked().flush()
    }
}

impl Levels {
    fn get(&self, logger: &str) -> LogLevel {
        LOGGERS
            .iter()
            .position(|n| *n == logger)
            .map_or(LogLevel::Info, |i| self.by_logger[i])
    }

    /// Each module at its logger's level; anything not pilotfish's stays quiet.
    fn filter(&self) -> EnvFilter {
        let directives: Vec<String> = std::iter::once("off".to_owned())
            .chain(
                MODULES
                    .iter()
                    .rev()
                    .map(|(m, l)| format!("{m}={}", self.get(l).directive())),
            )
            .collect();
        EnvFilter::try_new(directives.join(",")).unwrap_or_else(|_| EnvFilter::new("off"))
    }

    fn listing(&self) -> String {
        let mut out = String::from("active loggers:\n");
        for (n, l) in LOGGERS.iter().zip(&self.by_logger) {
            out.push_str(&format!("  {n}: {}\n", l.name()));
        }
        out.push('\n');
        out
    }
}

/// Admin `POST /logging`: `?level=L` (all loggers), `?paths=a:L,b:L`, `?<logger>=L`, or
/// nothing (list). Returns the listing, or the error text Envoy answers 400 with.
pub fn apply_admin(params: &[(String, String)]) -> Result<String, String> {
    let mut guard = LEVELS.locked();
    let levels = guard.get_or_insert_with(|| Levels {
        by_logger: vec![LogLevel::Info; LOGGERS.len()],
    });
    let mut next = levels.by_logger.clone();
    let mut error = None;
    for (k, v) in params {
        let set = |next: &mut Vec<LogLevel>, name: &str, level: &str| -> Result<(), &'static str> {
            let l = LogLevel::parse(level).ok_or("unknown logger level")?;
            let i = LOGGERS
                .iter()
                .position(|n| *n == name)
                .ok_or("unknown logger name")?;
            next[i] = l;
            Ok(())
        };
        let r = match k.as_str() {
            "level" => match LogLevel::parse(v) {
                Some(l) => {
                    next.iter_mut().for_each(|x| *x = l);
                    Ok(())
                }
                None => Err("unknown logger level"),
            },
            "paths" => v.split(',').try_for_each(|p| match p.split_once(':') {
                Some((n, l)) if !n.is_empty() && !l.is_empty() => set(&mut next, n, l),
                _ => Err("empty logger name or empty logger level"),
            }),
            "group" => Err("group parameter requires fine-grain logging to be enabled"),
            name if LOGGERS.contains(&name) => set(&mut next, name, v),
            _ => Err("unknown logger level"),
        };
        if let Err(e) = r {
            error = Some(e);
            break;
        }
    }
    if error.is_none() {
        levels.by_logger = next;
        if let Some(h) = RELOAD.get() {
            let _ = h.reload(levels.filter());
        }
    }
    match error {
        None => Ok(levels.listing()),
        Some(e) => Err(format!(
            "error: {e}\n\nusage: /logging?<name>=<level> (change single level)\n\
             usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
             usage: /logging?level=<level> (change all levels)\n\
             usage: /logging?group=<group_name>:<level> (change group of loggers)\n\
             levels: trace debug info warning error critical off \n{}",
            levels.listing()
        )),
    }
}

/// Formats events in an spdlog pattern (or a JSON object of patterns).
struct Pattern {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Pattern
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut msg = MessageText::default();
        event.record(&mut msg);
        let line = Line {
            at: SystemTime::now(),
            level: *event.metadata().level(),
            logger: logger_of(event.metadata().target()),
            file: event.metadata().file().unwrap_or(""),
            line: event.metadata().line().unwrap_or(0),
            message: &msg.0,
        };
        match &self.format {
            LogFormat::Text(p) => writeln!(writer, "{}", line.render(p, false)),
            LogFormat::Json(map) => {
                let obj: serde_json::Map<String, serde_json::Value> = map
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::String(p) => {
                                serde_json::Value::String(line.render(p, true))
                            }
                            other => other.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

/// The message and the other fields of an event, as one text.
#[derive(Default)]
struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

struct Line<'a> {
    at: SystemTime,
    level: Level,
    logger: &'static str,
    file: &'a str,
    line: u32,
    message: &'a str,
}

impl Line<'_> {
    /// Renders an spdlog pattern. In JSON values, `%j` is the message JSON-escaped and
    /// everything lands in a string anyway, so `%v` and `%j` both give the message.
    fn render(&self, pattern: &str, json: bool) -> String {
        let d = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs();
        let (y, mo, da) = civil(secs / 86_400);
        let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let mut out = String::with_capacity(pattern.len() + self.message.len() + 32);
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('Y') => out.push_str(&format!("{y:04}")),
                Some('m') => out.push_str(&format!("{mo:02}")),
                Some('d') => out.push_str(&format!("{da:02}")),
                Some('H') => out.push_str(&format!("{h:02}")),
                Some('M') => out.push_str(&format!("{mi:02}")),
                Some('S') => out.push_str(&format!("{s:02}")),
                Some('T') => out.push_str(&format!("{h:02}:{mi:02}:{s:02}")),
                Some('e') => out.push_str(&format!("{:03}", d.subsec_millis())),
                Some('f') => out.push_str(&format!("{:06}", d.subsec_micros())),
                Some('F') => out.push_str(&format!("{:09}", d.subsec_nanos())),
                Some('z') => out.push_str("+00:00"),
                Some('l') => out.push_str(level_name(self.level)),
                Some('L') => out.push(level_name(self.level).chars().next().unwrap_or('?')),
                Some('n') => out.push_str(self.logger),
                Some('g') => out.push_str(self.file),
                Some('s') => out.push_str(self.file.rsplit('/').next().unwrap_or(self.file)),
                Some('#') => out.push_str(&self.line.to_string()),
                Some('v') | Some('j') if json => out.push_str(self.message),
                Some('v') => out.push_str(self.message),
                Some('j') => {
                    let quoted = serde_json::Value::String(self.message.to_owned()).to_string();
                    out.push_str(&quoted[1..quoted.len() - 1]);
                }
                Some('t') => out.push_str(&nix::unistd::gettid().to_string()),
                Some('P') => out.push_str(&std::process::id().to_string()),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// Year, month, day of a day count since 1970-01-01 (UTC).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Checks a `json_format` as Envoy does: `%v` is refused there (`%j` is the message).
pub fn check_json_format(map: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains("%v"),
            serde_json::Value::Object(m) => m.values().any(walk),
            serde_json::Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    if map.values().any(walk) {
        return Err("Usage of %v is unavailable for JSON log formats".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(msg: &str) -> Line<'_> {
        Line {
            // 2026-11-28T08:40:24.304898Z
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_855_224_304_898),
            level: Level::WARN,
            logger: "upstream",
            file: "src/upstream/dns.rs",
            line: 42,
            message: msg,
        }
    }

    #[test]
    fn istios_text_pattern() {
        let p = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t";
        let out = line("DNS resolution failed").render(p, false);
        let tid = nix::unistd::gettid().to_string();
        assert_eq!(
            out,
            format!(
                "2026-11-28T08:40:24.304898Z\twarning\tenvoy upstream src/upstream/dns.rs:42\tDNS resolution failed\tthread={tid}"
            )
        );
        assert_eq!(
            line("x").render(DEFAULT_FORMAT, false),
            format!(
                "[2026-11-28 08:40:24.304][{tid}][warning][upstream] [src/upstream/dns.rs:42] x"
            )
        );
        assert_eq!(line("a \"q\"").render("%j", false), r#"a \"q\""#);
    }

    #[test]
    fn component_levels_are_checked() {
        assert_eq!(
            parse_components("misc:error,upstream:debug").unwrap(),
            [
                ("misc".to_owned(), LogLevel::Error),
                ("upstream".to_owned(), LogLevel::Debug)
            ]
        );
        assert_eq!(
            parse_components("nosuch:info").unwrap_err(),
            "invalid component specified 'nosuch'"
        );
        assert_eq!(
            parse_components("misc").unwrap_err(),
            "component log level not correctly specified 'misc'"
        );
        assert!(check_json_format(serde_json::json!({"msg": "%v"}).as_object().unwrap()).is_err());
    }

    #[test]
    fn modules_map_to_envoy_loggers() {
        assert_eq!(logger_of("pilotfish::http::router"), "router");
        assert_eq!(logger_of("pilotfish::upstream::http_pool"), "pool");
        assert_eq!(logger_of("pilotfish::upstream::cluster"), "upstream");
        assert_eq!(logger_of("pilotfish::xds::ads"), "config");
        assert_eq!(logger_of("pilotfish::memory"), "misc");
        assert_eq!(logger_of("pilotfish"), "misc");
        for (_, l) in MODULES {
            assert!(LOGGERS.contains(l), "{l} is not an Envoy logger");
        }
    }

    #[test]
    fn admin_logging_sets_and_lists_levels() {
        let listing = apply_admin(&[("paths".into(), "upstream:debug,misc:error".into())]).unwrap();
        assert!(listing.starts_with("active loggers:\n  a2a: "), "{listing}");
        assert!(listing.contains("  upstream: debug\n"), "{listing}");
        assert!(listing.contains("  misc: error\n"), "{listing}");
        let err = apply_admin(&[("level".into(), "verbose".into())]).unwrap_err();
        assert!(
            err.starts_with("error: unknown logger level\n\nusage:"),
            "{err}"
        );
        let err = apply_admin(&[("nosuch".into(), "info".into())]).unwrap_err();
        assert!(err.starts_with("error: unknown logger level"), "{err}");
        let err = apply_admin(&[("paths".into(), "upstream".into())]).unwrap_err();
        assert!(err.starts_with("error: empty logger name or empty logger level"));
        let listing = apply_admin(&[("router".into(), "trace".into())]).unwrap();
        assert!(listing.contains("  router: trace\n"), "{listing}");
    }
}
