//! Log levels: set for everything at start (`-l`), changed while running by admin
//! `/logging`, per logger as Envoy names them (`?wasm=debug`, `?paths=http:trace,
//! router:debug`, `?level=info`).
//!
//! A logger is a set of tracing targets (Strait's modules): the filter is an
//! `EnvFilter` with one directive per target, swapped through a reload handle, so a
//! change costs nothing on the hot path (tracing caches each call site's interest,
//! and rebuilds it when the filter changes). Crates that are not Strait's (tokio,
//! wasmtime) follow the level last set for everything; hyper and h2 stay at `warn`
//! unless a logger that includes them is set (`http`, `http2`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Registry};

/// Envoy's logger names that mean something in Strait, and the targets each covers.
const LOGGERS: &[(&str, &[&str])] = &[
    ("admin", &["strait::admin"]),
    (
        "config",
        &["strait::reload", "strait::runtime", "strait_xds"],
    ),
    (
        "connection",
        &[
            "strait::conn",
            "strait::socket",
            "strait::listener",
            "strait::framing",
        ],
    ),
    (
        "filter",
        &[
            "strait::chain",
            "strait::fault",
            "strait::health_filter",
            "strait::netfilter",
        ],
    ),
    ("hc", &["strait::health"]),
    (
        "http",
        &[
            "strait::h1_server",
            "strait::h1",
            "strait::headers",
            "strait::stream",
            "strait::body",
            "strait::access_log",
            "strait::error",
            "hyper",
        ],
    ),
    ("http2", &["strait::h2_server", "h2"]),
    // `strait` is also every module no other logger names (a longer target wins).
    ("main", &["strait", "strait::app", "strait::worker"]),
    ("pool", &["strait::pool", "strait::h1_client"]),
    (
        "router",
        &[
            "strait::router",
            "strait::attempts",
            "strait::retry",
            "strait::timeouts",
        ],
    ),
    (
        "upstream",
        &[
            "strait::cluster",
            "strait::lb",
            "strait::outlier",
            "strait::breaker",
            "strait::callout",
        ],
    ),
    (
        "wasm",
        &[
            "strait::wasm",
            "strait::wasm_service",
            "strait::wasm_remote",
            "strait_filters",
        ],
    ),
];

/// Envoy's levels, with `warn` taken for `warning` (Strait's `-l` spells it so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
    Off,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warning" | "warn" => Level::Warning,
            "error" => Level::Error,
            "critical" => Level::Critical,
            "off" => Level::Off,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
            Level::Off => "off",
        }
    }

    /// As an `EnvFilter` directive's level (tracing has no `critical`).
    fn directive(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warn",
            Level::Error | Level::Critical => "error",
            Level::Off => "off",
        }
    }

    /// proxy-wasm's `LogLevel` (`proxy_get_log_level`): 0 trace … 5 critical.
    fn wasm(self) -> u32 {
        match self {
            Level::Trace => 0,
            Level::Debug => 1,
            Level::Info => 2,
            Level::Warning => 3,
            Level::Error => 4,
            Level::Critical | Level::Off => 5,
        }
    }
}

/// The levels in force: one for everything else, one per logger.
#[derive(Debug, Clone)]
struct Levels {
    rest: Level,
    loggers: BTreeMap<&'static str, Level>,
}

impl Levels {
    fn all(level: Level) -> Levels {
        Levels {
            rest: level,
            loggers: LOGGERS.iter().map(|(name, _)| (*name, level)).collect(),
        }
    }

    fn filter(&self) -> EnvFilter {
        // Each target once: hyper and h2 stay quiet unless their logger was set apart
        // from the rest.
        let mut targets: BTreeMap<&str, Level> = BTreeMap::new();
        for (name, covered) in LOGGERS {
            let level = self.loggers[name];
            for target in *covered {
                let level = match *target {
                    "hyper" | "h2" if level == self.rest => quiet_level(level),
                    _ => level,
                };
                targets.insert(target, level);
            }
        }
        let mut spec = self.rest.directive().to_owned();
        for (target, level) in targets {
            let _ = write!(spec, ",{target}={}", level.directive());
        }
        EnvFilter::try_new(&spec).expect("the directives are built from known names")
    }

    /// `active loggers:` and one line per logger, as Envoy's `/logging` prints them.
    fn render(&self) -> String {
        let mut out = String::from("active loggers:\n");
        for (name, level) in &self.loggers {
            let _ = writeln!(out, "  {name}: {}", level.name());
        }
        out
    }
}

/// hyper's and h2's level when no logger set them: `warn`, or quieter.
fn quiet_level(rest: Level) -> Level {
    match rest {
        Level::Trace | Level::Debug | Level::Info => Level::Warning,
        quieter => quieter,
    }
}

/// The process's logging, once installed by the binary.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    levels: Mutex<Levels>,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// The filter layer for `level` everywhere, and its place for [`install`].
pub fn layer(level: Level) -> (reload::Layer<EnvFilter, Registry>, Logging) {
    let levels = Levels::all(level);
    let (layer, handle) = reload::Layer::new(levels.filter());
    strait_filters::wasm::set_log_level(levels.loggers["wasm"].wasm());
    let logging = Logging {
        handle,
        levels: Mutex::new(levels),
    };
    (layer, logging)
}

/// Makes `logging` the one admin `/logging` changes.
pub fn install(logging: Logging) {
    let _ = LOGGING.set(logging);
}

/// What admin `/logging` asked for, from its query.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// No parameter: only list the loggers.
    None,
    /// `?level=`: every logger, and everything else.
    All(&'a str),
    /// `?<logger>=<level>`, or each `name:level` of `?paths=`.
    Loggers(Vec<(&'a str, &'a str)>),
}

impl<'a> Change<'a> {
    /// Envoy takes one parameter at most.
    pub fn parse(query: Option<&'a str>) -> Result<Change<'a>, &'static str> {
        let params: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .collect();
        let [param] = params[..] else {
            return match params.is_empty() {
                true => Ok(Change::None),
                false => Err("one parameter at a time"),
            };
        };
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        Ok(match name {
            "level" => Change::All(value),
            "paths" => Change::Loggers(
                value
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once(':').unwrap_or((p, "")))
                    .collect(),
            ),
            name => Change::Loggers(vec![(name, value)]),
        })
    }
}

/// Applies `change`; `Ok` with the loggers' listing, or `Err` with the usage text
/// naming what was wrong (nothing changed then).
pub fn apply(change: &Change<'_>) -> Result<String, String> {
    let Some(logging) = LOGGING.get() else {
        return Err("logging is not configurable in this process\n".to_owned());
    };
    let mut levels = logging
        .levels
        .lock()
        .expect("levels lock is never poisoned");
    let mut next = levels.clone();
    match change {
        Change::None => return Ok(levels.render()),
        Change::All(level) => {
            let level =
                Level::parse(level).ok_or_else(|| usage("unknown logger level", &levels))?;
            next = Levels::all(level);
        }
        Change::Loggers(pairs) => {
            for (name, level) in pairs {
                let Some(slot) = next.loggers.get_mut(*name) else {
                    return Err(usage(&format!("unknown logger name `{name}`"), &levels));
                };
                *slot = Level::parse(level).ok_or_else(|| {
                    usage(
                        &format!("unknown logger level `{level}` for {name}"),
                        &levels,
                    )
                })?;
            }
        }
    }
    logging
        .handle
        .reload(next.filter())
        .map_err(|e| format!("error: {e}\n"))?;
    strait_filters::wasm::set_log_level(next.loggers["wasm"].wasm());
    tracing::info!(loggers = ?next.loggers, rest = next.rest.name(), "log levels changed");
    *levels = next;
    Ok(levels.render())
}

fn usage(error: &str, levels: &Levels) -> String {
    format!(
        "error: {error}\n\n\
         usage: /logging?<name>=<level> (change single level)\n\
         usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
         usage: /logging?level=<level> (change all levels)\n\
         levels: trace debug info warning error critical off\n{}",
        levels.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_as_envoy_takes_them() {
        assert_eq!(Change::parse(None), Ok(Change::None));
        assert_eq!(Change::parse(Some("level=debug")), Ok(Change::All("debug")));
        assert_eq!(
            Change::parse(Some("wasm=trace")),
            Ok(Change::Loggers(vec![("wasm", "trace")]))
        );
        assert_eq!(
            Change::parse(Some("paths=http:debug,router:error")),
            Ok(Change::Loggers(vec![
                ("http", "debug"),
                ("router", "error")
            ]))
        );
        assert!(Change::parse(Some("http=info&router=info")).is_err());
    }

    #[test]
    fn every_logger_builds_a_valid_filter() {
        let mut levels = Levels::all(Level::Info);
        for level in ["trace", "debug", "warning", "critical", "off"] {
            for (name, _) in LOGGERS {
                levels.loggers.insert(name, Level::parse(level).unwrap());
                let _ = levels.filter();
            }
        }
        let text = Levels::all(Level::Warning).render();
        assert!(
            text.starts_with("active loggers:\n  admin: warning\n"),
            "{text}"
        );
    }
}
