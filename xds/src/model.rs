//! Strait's own config model: immutable, validated, everything expensive built once.
//!
//! The translator (`crate::translate`) is the only producer of these values; the proxy
//! only reads them. A `Snapshot` is published with one `ArcSwap::store` and a request
//! keeps the `Arc<Snapshot>` it started with until it ends.
//!
//! Pure decisions over the model (virtual-host lookup, route match, weighted cluster
//! pick, redirect location, path rewrite) live here as methods so they are unit-tested
//! from tables without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

/// The whole validated config of one proxy.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<Arc<Listener>>,
    /// Clusters by name; `cluster_order` keeps the YAML order for `/clusters` and dumps.
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub cluster_order: Vec<String>,
    pub admin: Option<Admin>,
    pub node: Node,
    /// The config as the user wrote it, as JSON, for `/config_dump`.
    pub source: serde_json::Value,
    /// `bootstrap_extensions` of type `envoy.bootstrap.wasm`, in order.
    pub wasm_services: Vec<Arc<WasmServiceConfig>>,
}

/// `envoy.extensions.wasm.v3.WasmService`: a plugin that runs beside the listeners,
/// not on any stream (ticks, shared data, metrics).
#[derive(Debug)]
pub struct WasmServiceConfig {
    pub plugin: Arc<WasmFilterConfig>,
    /// One VM for the process, rather than one per worker.
    pub singleton: bool,
}

/// `filter_metadata` of a `config.core.v3.Metadata`: namespaces, each a struct.
pub type Metadata = Vec<(String, serde_json::Map<String, serde_json::Value>)>;

#[derive(Debug, Clone, Default)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    /// `metadata`, a `google.protobuf.Struct` (JSON object).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub per_connection_buffer_limit_bytes: u32,
    /// `envoy.filters.network.wasm` filters before the connection manager, in order.
    pub network_filters: Vec<Arc<WasmFilterConfig>>,
    pub hcm: HttpConnectionManager,
    /// `traffic_direction` as its number (0 unspecified, 1 inbound, 2 outbound).
    pub traffic_direction: i64,
    /// `drain_type: MODIFY_ONLY`: the listener's connections are not closed because
    /// the server's health check failed (admin `/healthcheck/fail`).
    pub drain_modify_only: bool,
    /// The filter chain's `name`.
    pub filter_chain_name: String,
    pub metadata: Metadata,
}

/// `server_header_transformation` of the connection manager: what happens to the
/// `server` header of every response, proxied or local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerHeaderTransformation {
    /// `server_name` replaces whatever the upstream sent (Envoy's default).
    #[default]
    Overwrite,
    /// `server_name` only on a response that has no `server` header.
    AppendIfAbsent,
    /// The response's own `server` header (or none) goes through untouched.
    PassThrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecType {
    Auto,
    Http1,
    Http2,
}

/// What Strait's HTTP/2 server advertises (`http2_protocol_options` of the connection
/// manager). The defaults are smaller than Envoy's (2^31-1 streams, 256 MiB windows):
/// a stream's window is what a client may send before the upstream reads it, and
/// Strait holds it in memory, so the default bounds a connection to 4 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: 1024,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 4 << 20,
        }
    }
}

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub codec_type: CodecType,
    pub stat_prefix: String,
    pub route_config: Arc<RouteConfig>,
    pub access_logs: Vec<AccessLog>,
    /// Time allowed to receive the complete request head. `None`: disabled (Envoy's default).
    pub request_headers_timeout: Option<Duration>,
    /// Per-stream idle timeout. Envoy's default is 5 minutes; `None` when set to 0.
    pub stream_idle_timeout: Option<Duration>,
    /// Whole-request (downstream) timeout, `request_timeout`. `None`: disabled.
    pub request_timeout: Option<Duration>,
    /// Connection idle timeout (`common_http_protocol_options.idle_timeout`); Envoy's
    /// default is 1 hour; `None` when set to 0.
    pub idle_timeout: Option<Duration>,
    /// Default 60, max 8192 (Envoy's bounds).
    pub max_request_headers_kb: u32,
    /// `http2_protocol_options`: the settings the HTTP/2 server advertises.
    pub http2: Http2Settings,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    /// Default true.
    pub generate_request_id: bool,
    /// Lower-case upgrade types allowed (`upgrade_configs[].upgrade_type`), e.g. "websocket".
    pub upgrade_types: Vec<String>,
    /// Value of the `server` response header; Envoy's default is "envoy", ours "strait".
    /// Validated and made once here: each response clones it (no allocation).
    pub server_name: HeaderValue,
    /// When `server_name` goes on a response (`server_header_transformation`).
    pub server_header_transformation: ServerHeaderTransformation,
    /// The router filter's `suppress_envoy_headers`: the router adds none of its own
    /// `x-envoy-*` headers (`x-envoy-expected-rq-timeout-ms`, `x-envoy-original-path`
    /// and `x-envoy-original-host` upstream, `x-envoy-upstream-service-time` and
    /// `x-envoy-overloaded` downstream), as in Envoy. Headers other parts add
    /// (`x-envoy-attempt-count`, `x-envoy-external-address`, ...) stay.
    pub suppress_envoy_headers: bool,
    /// `http_filters` before the router, in order; the router itself is implied.
    pub http_filters: Vec<HttpFilterConfig>,
    /// `common_http_protocol_options.max_stream_duration`: a stream's lifetime limit
    /// from its start; a route's `max_stream_duration` replaces it. `None`: unlimited.
    pub max_stream_duration: Option<Duration>,
    /// `internal_address_config`: which downstream addresses are internal. `None`
    /// (Envoy 1.40's default): no request is internal.
    pub internal_addresses: Option<InternalAddresses>,
    /// `http_protocol_options.default_host_for_http_10`: the host of an HTTP/1.0
    /// request that names none (it is routed on it and sent upstream with it).
    pub default_host_for_http_10: Option<HeaderValue>,
}

/// `internal_address_config` as translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalAddresses {
    /// `unix_sockets`: Strait listens on TCP only, so this never applies.
    pub unix_sockets: bool,
    /// `cidr_ranges`; empty means Envoy's built-in set: 10/8, 172.16/12, 192.168/16,
    /// 127.0.0.1, fd00::/8 and ::1.
    pub cidr_ranges: Vec<(IpAddr, u8)>,
}

impl InternalAddresses {
    /// Whether `ip` counts as internal, as Envoy's `InternalAddressConfig` decides.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.cidr_ranges.is_empty() {
            return match ip {
                IpAddr::V4(v4) => {
                    let o = v4.octets();
                    o[0] == 10
                        || (o[0] == 172 && (16..=31).contains(&o[1]))
                        || (o[0] == 192 && o[1] == 168)
                        || v4 == std::net::Ipv4Addr::LOCALHOST
                }
                IpAddr::V6(v6) => v6.octets()[0] == 0xfd || v6.is_loopback(),
            };
        }
        self.cidr_ranges
            .iter()
            .any(|(prefix, len)| match (prefix, ip) {
                (IpAddr::V4(p), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    u32::from(*p) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(p), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    u128::from(*p) & mask == u128::from(a) & mask
                }
                _ => false,
            })
    }
}

/// One configured HTTP filter (everything in `http_filters` except the router).
#[derive(Debug, Clone)]
pub enum HttpFilterConfig {
    /// `envoy.filters.http.wasm`.
    Wasm(Arc<WasmFilterConfig>),
    /// `envoy.filters.http.fault`.
    Fault(Arc<FaultFilterConfig>),
    /// `envoy.filters.http.set_filter_state`.
    SetFilterState(Arc<SetFilterStateConfig>),
    /// `envoy.filters.http.health_check`.
    HealthCheck(Arc<HealthCheckFilterConfig>),
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(Arc<LocalRateLimitConfig>),
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` as translated, in
/// `http_filters` or in a `typed_per_filter_config`.
#[derive(Debug)]
pub struct LocalRateLimitConfig {
    /// Field path of the config's fields.
    pub path: String,
    /// The filter's name in `http_filters` (per-route configs are keyed by it), or the
    /// `typed_per_filter_config` key of a per-route config.
    pub name: String,
    /// Stats are `<stat_prefix>.http_local_rate_limit.*`.
    pub stat_prefix: String,
    /// The answer's status: `status.code`, 429 when unset or under 400 (as Envoy).
    pub status: u16,
    /// `None`: no limit (only a filter-level config may have none).
    pub token_bucket: Option<TokenBucket>,
    /// `filter_enabled.default_value`; `None` (unset) is 0%, as in Envoy.
    pub filter_enabled: Option<FractionalPercent>,
    /// `filter_enforced.default_value`; `None` (unset) is 0%.
    pub filter_enforced: Option<FractionalPercent>,
    /// `request_headers_to_add_when_not_enforced` (request side) and
    /// `response_headers_to_add` (response side) as one set of mutations.
    pub headers: HeaderMutations,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    /// `local_rate_limit_per_downstream_connection`: a bucket per connection.
    pub per_downstream_connection: bool,
    /// `rate_limited_as_resource_exhausted`: gRPC status 8, not 14.
    pub rate_limited_as_resource_exhausted: bool,
}

/// `type.v3.TokenBucket`: `max_tokens` at most, `tokens_per_fill` more every
/// `fill_interval` (Envoy 1.40 adds them continuously, not in steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// A filter's config in a route's, virtual host's or route configuration's
/// `typed_per_filter_config`, keyed by the filter's name.
#[derive(Debug)]
pub enum PerFilterConfig {
    LocalRateLimit(Arc<LocalRateLimitConfig>),
}

/// `envoy.extensions.filters.http.health_check.v3.HealthCheck` as translated.
#[derive(Debug)]
pub struct HealthCheckFilterConfig {
    /// Field path of the filter's fields.
    pub path: String,
    /// `pass_through_mode`: health checks go upstream unless the server's health
    /// check failed or a cached answer is fresh; otherwise the filter answers them.
    pub pass_through_mode: bool,
    /// `cache_time`, whole milliseconds as Envoy reads it; `None` when unset or
    /// under 1 ms. Only in pass-through mode (Envoy refuses it otherwise).
    pub cache_time: Option<Duration>,
    /// A request matching all of these is a health check (none: every request).
    pub headers: Vec<RequestHeaderMatcher>,
    /// `cluster_min_healthy_percentages` by cluster name, the percentage truncated
    /// to a whole number as Envoy does. Empty in pass-through mode, where Envoy
    /// ignores it.
    pub cluster_min_healthy_percentages: Vec<(String, u64)>,
}

/// A route `HeaderMatcher` in a filter's `headers`, where Envoy also matches the
/// request's pseudo-headers (`:path` is how a health check endpoint is named).
#[derive(Debug)]
pub struct RequestHeaderMatcher {
    /// `None`: `matcher.name` is a header; else the pseudo-header matched, and
    /// `matcher.name` a stand-in.
    pub pseudo: Option<PseudoHeader>,
    pub matcher: HeaderMatcher,
}

/// The request pseudo-headers a [`RequestHeaderMatcher`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoHeader {
    /// Path and query, as the request line has them.
    Path,
    Method,
    Authority,
    Scheme,
}

impl PseudoHeader {
    pub fn from_name(name: &str) -> Option<PseudoHeader> {
        match name {
            ":path" => Some(PseudoHeader::Path),
            ":method" => Some(PseudoHeader::Method),
            ":authority" => Some(PseudoHeader::Authority),
            ":scheme" => Some(PseudoHeader::Scheme),
            _ => None,
        }
    }
}

/// A request's pseudo-header values, for [`RequestHeaderMatcher::matches`].
#[derive(Debug, Clone, Copy)]
pub struct PseudoHeaders<'a> {
    pub path: &'a str,
    pub method: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
}

impl RequestHeaderMatcher {
    /// A header is matched by [`HeaderMatcher::matches`]; a pseudo-header, which a
    /// request always has, by the same kind and inversion over its one value.
    pub fn matches(&self, headers: &HeaderMap, pseudo: &PseudoHeaders<'_>) -> bool {
        let value = match self.pseudo {
            None => return self.matcher.matches(headers),
            Some(PseudoHeader::Path) => pseudo.path,
            Some(PseudoHeader::Method) => pseudo.method,
            Some(PseudoHeader::Authority) => pseudo.authority,
            Some(PseudoHeader::Scheme) => pseudo.scheme,
        };
        let matched = match &self.matcher.kind {
            HeaderMatchKind::Present(present) => *present,
            HeaderMatchKind::String(matcher) => matcher.matches(value),
            HeaderMatchKind::Range { start, end } => value
                .parse::<i64>()
                .is_ok_and(|n| (*start..*end).contains(&n)),
        };
        matched != self.matcher.invert
    }
}

/// `envoy.extensions.filters.http.set_filter_state.v3.Config` as translated: the
/// objects to set when the request headers arrive.
#[derive(Debug, PartialEq)]
pub struct SetFilterStateConfig {
    pub values: Vec<FilterStateValue>,
}

#[derive(Debug, PartialEq)]
pub struct FilterStateValue {
    /// `object_key`.
    pub key: String,
    /// Made by `envoy.hashable_string` (route `hash_policy.filter_state` reads it);
    /// `envoy.string` objects are not hashable.
    pub hashable: bool,
    pub read_only: bool,
    pub skip_if_empty: bool,
    /// The value, a text format over the request (`%REQ(x-user)%`, …).
    pub format: Vec<FormatPiece>,
}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault` as translated.
#[derive(Debug)]
pub struct FaultFilterConfig {
    /// Field path of the filter's fields, for errors found after translation.
    pub path: String,
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// `upstream_cluster`: faults only for requests routed to this cluster.
    pub upstream_cluster: Option<String>,
    /// Faults only for requests matching all of these.
    pub headers: Vec<HeaderMatcher>,
    /// `None`: unlimited.
    pub max_active_faults: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    /// `None`: `header_delay`, the duration comes from `x-envoy-fault-delay-request`.
    pub fixed: Option<Duration>,
    pub percentage: FractionalPercent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    pub kind: FaultAbortKind,
    pub percentage: FractionalPercent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAbortKind {
    /// `http_status`, in [200, 600).
    Http(u16),
    /// `grpc_status`.
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` / `x-envoy-fault-abort-grpc-request`.
    Header,
}

/// `type.v3.FractionalPercent`: `numerator` out of `denominator` (100, 10 000 or 1 000 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FractionalPercent {
    pub numerator: u32,
    pub denominator: u32,
}

impl FractionalPercent {
    /// Envoy's `evaluateFractionalPercent`: `random % denominator < numerator`, so a
    /// numerator above the denominator means always and zero means never.
    pub fn enabled(self, random: u64) -> bool {
        random % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }

    /// The percentage a `x-envoy-fault-*-percentage` header asks for: its numerator
    /// capped at the configured one, over the configured denominator (Envoy's
    /// `HeaderPercentageProvider`). A missing or unparsable header changes nothing.
    pub fn capped_by_header(self, header: Option<&[u8]>) -> FractionalPercent {
        let requested = header
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        match requested {
            Some(numerator) => FractionalPercent {
                numerator: numerator.min(self.numerator),
                denominator: self.denominator,
            },
            None => self,
        }
    }
}

/// `envoy.extensions.filters.http.wasm.v3.Wasm` as translated: the module bytes are
/// read, the configurations decoded. Compiling is the proxy's job (this crate has no
/// wasm engine); a compile error is reported against `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmFilterConfig {
    /// Field path of the filter's `typed_config`, for errors found after translation.
    pub path: String,
    /// `config.name`.
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    /// `config.configuration`, as the plugin reads it in `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// `config.vm_config.configuration`, read in `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// The module (`vm_config.code.local`); empty when it is `remote`.
    pub code: Arc<[u8]>,
    /// `vm_config.code.remote`: the proxy fetches the module before it accepts the
    /// config (this crate does no IO beyond reading files).
    pub remote: Option<RemoteCode>,
    /// Where the module came from: the file name, `inline`, or the remote URI.
    pub code_source: String,
    /// `fail_open`, or `failure_policy: FAIL_OPEN`.
    pub fail_open: bool,
    /// `vm_config.environment_variables`, resolved when the config is loaded: the
    /// `key_values`, and each `host_env_keys` name the proxy's environment has.
    pub environment: Vec<(String, String)>,
}

/// `config.core.v3.RemoteDataSource` as translated: a GET of `uri` through
/// `cluster`, retried, whose body must hash to `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCode {
    /// Field path of the `remote` message, for errors found while fetching.
    pub path: String,
    /// `http_uri.uri` as configured.
    pub uri: String,
    /// The URI's authority, sent as `Host` / `:authority`.
    pub authority: String,
    /// The URI's path and query, the request target.
    pub path_and_query: String,
    /// `http_uri.cluster`: the upstream the request goes to, whatever the URI's host.
    pub cluster: String,
    /// `http_uri.timeout` for each attempt; zero means none, as in Envoy.
    pub timeout: Duration,
    /// `sha256`, lowercase hex.
    pub sha256: String,
    /// `retry_policy.num_retries`, default 1 (Envoy's).
    pub num_retries: u32,
    /// `retry_policy.retry_back_off.base_interval`, default 1 s (Envoy's).
    pub base_interval: Duration,
    /// `retry_policy.retry_back_off.max_interval`, default 10 × `base_interval`.
    pub max_interval: Duration,
}

// ---------------------------------------------------------------- access logs

#[derive(Debug, Clone)]
pub enum AccessLogSink {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    /// Field path of the entry (`….typed_config.access_log[0]`), for errors found
    /// when its sink is opened.
    pub path: String,
    pub sink: AccessLogSink,
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub enum LogFormat {
    /// A text format string; Envoy's default format when the user gave none.
    Text(Vec<FormatPiece>),
    /// `json_format`: one JSON object per line; values are format templates.
    Json(Vec<(String, JsonValueTemplate)>),
}

#[derive(Debug, Clone)]
pub enum JsonValueTemplate {
    /// A string with commands. A value that is exactly one command keeps that
    /// command's type (numbers stay numbers), as Envoy does.
    Format(Vec<FormatPiece>),
    /// Non-string literal (number, bool, null) kept as is.
    Literal(serde_json::Value),
    Object(Vec<(String, JsonValueTemplate)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum FormatPiece {
    Literal(String),
    Command(FormatCommand),
}

/// One `%COMMAND%` of Envoy's substitution format language.
#[derive(Debug, Clone, PartialEq)]
pub enum FormatCommand {
    /// `%START_TIME%` or `%START_TIME(strftime)%`.
    StartTime(Option<String>),
    /// `%REQ(X?Y):Z%`: request header X, else Y, truncated to Z bytes.
    /// Pseudo headers `:method`, `:path`, `:authority`, `:scheme` are understood.
    Req {
        main: String,
        alt: Option<String>,
        max_len: Option<usize>,
    },
    Resp {
        main: String,
        alt: Option<String>,
        max_len: Option<usize>,
    },
    Trailer {
        main: String,
        alt: Option<String>,
        max_len: Option<usize>,
    },
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    RequestDuration,
    ResponseDuration,
    UpstreamHost,
    /// The cluster's observability name (`alt_stat_name`, else its name).
    UpstreamCluster,
    /// The cluster's own name, whatever its `alt_stat_name`.
    UpstreamClusterRaw,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamDirectRemoteAddress,
    RouteName,
    Hostname,
}

// ---------------------------------------------------------------- routes

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderMutations,
    /// Lookup index built by the translator; see `find_virtual_host`.
    pub index: VirtualHostIndex,
    /// `typed_per_filter_config` by filter name, for every route (least specific).
    pub typed_per_filter_config: Vec<(String, PerFilterConfig)>,
}

/// Envoy's domain search order: exact, then longest `*.suffix`/`*suffix`, then longest
/// `prefix*`, then `*`. Values are indexes into `RouteConfig::virtual_hosts`.
#[derive(Debug, Default)]
pub struct VirtualHostIndex {
    pub exact: HashMap<String, usize>,
    /// (suffix without the leading '*', vhost), longest suffix first.
    pub suffixes: Vec<(String, usize)>,
    /// (prefix without the trailing '*', vhost), longest prefix first.
    pub prefixes: Vec<(String, usize)>,
    pub default: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub metadata: Metadata,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
    /// `include_request_attempt_count`: send `x-envoy-attempt-count` upstream.
    pub include_request_attempt_count: bool,
    /// `typed_per_filter_config` by filter name, for its routes.
    pub typed_per_filter_config: Vec<(String, PerFilterConfig)>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub metadata: Metadata,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderMutations,
    /// `typed_per_filter_config` by filter name (most specific).
    pub typed_per_filter_config: Vec<(String, PerFilterConfig)>,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderMutations {
    pub request_headers_to_add: Vec<HeaderValueOption>,
    pub request_headers_to_remove: Vec<HeaderName>,
    pub response_headers_to_add: Vec<HeaderValueOption>,
    pub response_headers_to_remove: Vec<HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderValueOption {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Applies to prefix/path/path_separated_prefix; default true.
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    /// Matched against the path without the query string, anchored at both ends.
    Regex(Regex),
    PathSeparatedPrefix(String),
}

#[derive(Debug)]
pub struct StringMatcher {
    pub kind: StringMatchKind,
    pub ignore_case: bool,
}

#[derive(Debug)]
pub enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored at both ends (Envoy's RE2 full match).
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub kind: HeaderMatchKind,
    pub invert: bool,
}

#[derive(Debug)]
pub enum HeaderMatchKind {
    /// `present_match: true|false`.
    Present(bool),
    String(StringMatcher),
    /// `range_match`: [start, end).
    Range {
        start: i64,
        end: i64,
    },
}

#[derive(Debug)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None`: `present_match: true`.
    pub string_match: Option<StringMatcher>,
}

#[derive(Debug)]
pub enum RouteAction {
    Route(RouteTarget),
    Redirect(Redirect),
    /// Direct-response bodies are small and shared between workers.
    DirectResponse {
        status: u16,
        body: Option<Arc<[u8]>>,
    },
}

#[derive(Debug)]
pub enum ClusterSpecifier {
    Cluster(String),
    Weighted {
        clusters: Vec<WeightedCluster>,
        total_weight: u32,
    },
    /// `cluster_header`: the cluster name is read from this request header.
    Header(HeaderName),
}

#[derive(Debug)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub headers: HeaderMutations,
}

#[derive(Debug)]
pub struct RouteTarget {
    pub cluster: ClusterSpecifier,
    pub prefix_rewrite: Option<String>,
    /// (pattern, substitution) — every match in the path (not the query) is replaced.
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite_literal: Option<String>,
    pub auto_host_rewrite: bool,
    /// Whole upstream request timeout; Envoy's default is 15 s, `None` when set to 0.
    pub timeout: Option<Duration>,
    /// `timeout` in milliseconds as the `x-envoy-expected-rq-timeout-ms` value, made
    /// once here rather than formatted per request.
    pub timeout_header: Option<HeaderValue>,
    /// Per-stream idle timeout on this route; overrides the HCM's. `Some(Duration::ZERO)`
    /// (written `0s`) disables it for this route, as in Envoy.
    pub idle_timeout: Option<Duration>,
    /// The route's `retry_policy`, else its virtual host's (a route's policy replaces
    /// the virtual host's whole, as in Envoy).
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `hash_policy`, in order; empty unless the route hashes requests for a
    /// RING_HASH or MAGLEV cluster.
    pub hash_policy: Vec<HashPolicy>,
    /// `hedge_policy.hedge_on_per_try_timeout` (the route's, else its virtual
    /// host's): a per-try timeout starts another attempt without cancelling the first.
    pub hedge_on_per_try_timeout: bool,
    /// The route's `max_stream_duration`; when set, the route `timeout` does not
    /// apply (Envoy's "new timeouts").
    pub max_stream_duration: Option<MaxStreamDuration>,
    /// `priority`: the cluster's circuit breakers and connection pools of that
    /// routing priority serve this route.
    pub priority: RoutingPriority,
}

/// `RouteAction.MaxStreamDuration` as translated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxStreamDuration {
    /// `max_stream_duration`: replaces the connection manager's; `Some(ZERO)`
    /// disables it on this route.
    pub max_stream_duration: Option<Duration>,
    /// `grpc_timeout_header_max`: a gRPC request's `grpc-timeout` is the limit, capped
    /// by this (zero: uncapped).
    pub grpc_timeout_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`: subtracted from `grpc-timeout`.
    pub grpc_timeout_header_offset: Option<Duration>,
}

/// `RouteAction.HashPolicy`: one input to a request's consistent hash.
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    /// Stop at this policy when a hash has been produced so far.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashPolicyKind {
    /// The header's value; several values are sorted and hashed together.
    Header(HeaderName),
    /// The cookie's value. Absent and with a `ttl`, a cookie is generated, set on
    /// the response, and its value hashed.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    /// `connection_properties.source_ip`: the downstream address (after XFF).
    SourceIp,
    /// The first value of this query parameter, undecoded.
    QueryParameter(String),
    /// The stream's filter-state object of this key, when it is hashable.
    FilterState(String),
}

/// `config.route.v3.RetryPolicy` as translated.
#[derive(Debug)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// `num_retries`; Envoy's default is 1.
    pub num_retries: u32,
    /// Bounds each attempt; the route `timeout` still bounds them all.
    pub per_try_timeout: Option<Duration>,
    /// `per_try_timeout` in milliseconds as the `x-envoy-expected-rq-timeout-ms` value,
    /// made once here rather than formatted per request.
    pub per_try_timeout_header: Option<HeaderValue>,
    /// `per_try_idle_timeout`: an attempt with no response progress for this long is
    /// reset (and counts as a per-try timeout).
    pub per_try_idle_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// Matched against the response headers (`retriable-headers`).
    pub retriable_headers: Vec<HeaderMatcher>,
    /// `retry_back_off.base_interval`, default 25 ms.
    pub base_interval: Duration,
    /// `retry_back_off.max_interval`, default 10 × `base_interval`.
    pub max_interval: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: retries avoid hosts tried before.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts`, default 1: how often the load balancer
    /// picks again when the predicate rejects a host.
    pub host_selection_retry_max_attempts: u32,
}

/// The `retry_on` conditions as a bit set, parsed once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(pub u16);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 7);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 9);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 10);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 11);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 12);

    /// Envoy's gRPC condition names (`x-envoy-retry-grpc-on`), with the `grpc-status`
    /// each retries.
    pub const GRPC_NAMES: [(&'static str, RetryOn, u16); 5] = [
        ("cancelled", RetryOn::GRPC_CANCELLED, 1),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED, 4),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED, 8),
        ("internal", RetryOn::GRPC_INTERNAL, 13),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE, 14),
    ];

    /// Envoy's HTTP condition names Strait implements (`x-envoy-retry-on`).
    pub const NAMES: [(&'static str, RetryOn); 8] = [
        ("5xx", RetryOn::FIVE_XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("reset", RetryOn::RESET),
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("retriable-4xx", RetryOn::RETRIABLE_4XX),
        ("refused-stream", RetryOn::REFUSED_STREAM),
        ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
        ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
    ];

    /// Parses a comma list as Envoy does (items trimmed). The first name Strait does
    /// not know comes back beside the set; the `x-envoy-retry-on` header skips such
    /// names as Envoy does, config refuses them.
    pub fn parse(list: &str) -> (RetryOn, Option<&str>) {
        Self::parse_with(list, true, true)
    }

    /// `x-envoy-retry-on`: HTTP names only; others are skipped.
    pub fn parse_http(list: &str) -> RetryOn {
        Self::parse_with(list, true, false).0
    }

    /// `x-envoy-retry-grpc-on`: gRPC names only; others are skipped.
    pub fn parse_grpc(list: &str) -> RetryOn {
        Self::parse_with(list, false, true).0
    }

    fn parse_with(list: &str, http: bool, grpc: bool) -> (RetryOn, Option<&str>) {
        let mut on = RetryOn::default();
        let mut unknown = None;
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let http_bit = RetryOn::NAMES
                .iter()
                .find(|(name, _)| http && *name == item)
                .map(|(_, bit)| *bit);
            let grpc_bit = RetryOn::GRPC_NAMES
                .iter()
                .find(|(name, _, _)| grpc && *name == item)
                .map(|(_, bit, _)| *bit);
            match http_bit.or(grpc_bit) {
                Some(bit) => on.0 |= bit.0,
                None => unknown = unknown.or(Some(item)),
            }
        }
        (on, unknown)
    }

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[derive(Debug)]
pub struct Redirect {
    /// `https_redirect: true` sets Some("https"); `scheme_redirect` sets it too.
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    /// 301 (default), 302, 303, 307, 308.
    pub status: u16,
    pub strip_query: bool,
}

// ---------------------------------------------------------------- clusters

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

impl LbPolicy {
    /// Whether picks follow the route's `hash_policy` (a random hash without one).
    pub fn is_consistent_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

/// Sizes of the consistent-hash tables; only the one for the cluster's `lb_policy`
/// is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLbConfig {
    /// `ring_hash_lb_config.minimum_ring_size`, default 1024.
    pub minimum_ring_size: u64,
    /// `ring_hash_lb_config.maximum_ring_size`, default 8M.
    pub maximum_ring_size: u64,
    /// `maglev_lb_config.table_size`, a prime, default 65537.
    pub maglev_table_size: u64,
}

impl Default for HashLbConfig {
    fn default() -> Self {
        HashLbConfig {
            minimum_ring_size: 1024,
            maximum_ring_size: 8 * 1024 * 1024,
            maglev_table_size: 65537,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// `use_downstream_protocol_config`: h2 downstream goes h2 upstream, else h1.
    Downstream,
}

#[derive(Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    /// `alt_stat_name`: the name for observability (see [`Cluster::stat_name`] and
    /// [`Cluster::observability_name`]), as Envoy's.
    pub alt_stat_name: Option<String>,
    pub metadata: Metadata,
    pub discovery: Discovery,
    /// Default 5 s.
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    /// Table sizes for RING_HASH and MAGLEV.
    pub hash_lb: HashLbConfig,
    pub protocol: UpstreamProtocol,
    /// Idle upstream connections are closed after this (`common_http_protocol_options.
    /// idle_timeout` in the cluster's HttpProtocolOptions); Envoy's default is 1 hour.
    /// `None` when set to 0.
    pub idle_timeout: Option<Duration>,
    /// Default 5 s, for STRICT_DNS / LOGICAL_DNS.
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    pub endpoints: Vec<Endpoint>,
    /// `common_lb_config.locality_weighted_lb_config` is set.
    pub locality_weighted: bool,
    /// `load_assignment.policy.overprovisioning_factor`, default 140 (percent).
    pub overprovisioning_factor: u32,
    /// Active health checking (`health_checks`); at most one so far.
    pub health_check: Option<HealthCheck>,
    /// `common_lb_config.healthy_panic_threshold`, a percentage (default 50): below
    /// that share of healthy hosts the load balancer ignores health.
    pub healthy_panic_threshold: f64,
    /// `circuit_breakers` thresholds by routing priority, `[DEFAULT, HIGH]` (Envoy's
    /// defaults unless set).
    pub circuit_breakers: [CircuitBreakers; 2],
    /// `outlier_detection`: passive ejection of failing hosts, when configured.
    pub outlier_detection: Option<OutlierDetection>,
}

impl Cluster {
    /// The name in the cluster's stats (`cluster.<name>.…`): `alt_stat_name` with each
    /// `:` made `_`, as Envoy emits it, else the cluster's name.
    pub fn stat_name(&self) -> std::borrow::Cow<'_, str> {
        match &self.alt_stat_name {
            Some(alt) => alt.replace(':', "_").into(),
            None => self.name.as_str().into(),
        }
    }

    /// The name access logs (`%UPSTREAM_CLUSTER%`) and the admin's `/clusters` show:
    /// `alt_stat_name` as written, else the cluster's name (Envoy's observability name).
    pub fn observability_name(&self) -> &str {
        self.alt_stat_name.as_deref().unwrap_or(&self.name)
    }
}

/// `config.cluster.v3.OutlierDetection`, the consecutive-failure detectors, with
/// Envoy's defaults filled in. Connect failures count as 503s (errors are not split
/// by origin).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx before an ejection; default 5.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 before an ejection; default 5.
    pub consecutive_gateway_failure: u32,
    /// Percent chance a consecutive-5xx ejection is enforced; default 100.
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance a gateway-failure ejection is enforced; default 0.
    pub enforcing_consecutive_gateway_failure: u32,
    /// How often ejections are reconsidered; default 10 s.
    pub interval: Duration,
    /// Ejection time per time ejected; default 30 s.
    pub base_ejection_time: Duration,
    /// Longest ejection; default 300 s.
    pub max_ejection_time: Duration,
    /// Most hosts ejected at once, in percent; default 10.
    pub max_ejection_percent: u32,
    /// Success-rate detector: hosts with at least `success_rate_request_volume`
    /// (default 100) requests in an interval, when at least
    /// `success_rate_minimum_hosts` (default 5) have, are ejected below
    /// mean - stdev_factor/1000 * stdev (default 1900); enforced at
    /// `enforcing_success_rate` percent (default 100).
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    /// Failure-percentage detector: hosts with at least
    /// `failure_percentage_request_volume` (default 50) requests in an interval, when
    /// at least `failure_percentage_minimum_hosts` (default 5) have, are ejected at
    /// `failure_percentage_threshold` percent failures (default 85); enforced at
    /// `enforcing_failure_percentage` percent (default 0).
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing_failure_percentage: u32,
    /// `split_external_local_origin_errors`: connect failures and timeouts count
    /// only toward `consecutive_local_origin_failure` (default 5, enforced at
    /// `enforcing_consecutive_local_origin_failure` percent, default 100), not as 503s.
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    /// With the split, the success-rate and failure-percentage detectors also run
    /// over local-origin outcomes (a request that got a response, or one whose
    /// connection failed), with the same volumes and thresholds, enforced at
    /// `enforcing_local_origin_success_rate` (default 100) and
    /// `enforcing_failure_percentage_local_origin` (default 0) percent.
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage_local_origin: u32,
}

/// A route's `priority` (`config.core.v3.RoutingPriority`): which circuit-breaker
/// thresholds and connection pools its requests use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RoutingPriority {
    #[default]
    Default,
    High,
}

impl RoutingPriority {
    /// Index into per-priority arrays (`Cluster::circuit_breakers`).
    pub fn index(self) -> usize {
        match self {
            RoutingPriority::Default => 0,
            RoutingPriority::High => 1,
        }
    }

    /// Envoy's name in stats (`circuit_breakers.<name>.…`).
    pub fn stat_name(self) -> &'static str {
        match self {
            RoutingPriority::Default => "default",
            RoutingPriority::High => "high",
        }
    }
}

/// `config.cluster.v3.CircuitBreakers.Thresholds` of one routing priority: limits
/// shared by every worker, counted per cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakers {
    /// Connections open (or opening) to all hosts; default 1024.
    pub max_connections: u32,
    /// Requests waiting for a connection; default 1024.
    pub max_pending_requests: u32,
    /// Requests under way upstream (each attempt); default 1024.
    pub max_requests: u32,
    /// Retries under way; default 3.
    pub max_retries: u32,
    /// Publish `circuit_breakers.default.remaining_*` gauges.
    pub track_remaining: bool,
    /// `retry_budget`: when set, replaces `max_retries`.
    pub retry_budget: Option<RetryBudget>,
    /// `per_host_thresholds[].max_connections`: connections to any one host (the
    /// only per-host threshold Envoy honours); `None`: no per-host limit.
    pub max_connections_per_host: Option<u32>,
}

/// `Thresholds.RetryBudget`: retries under way may be `budget_percent` of the
/// requests active and pending, and never fewer than `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Default 20.0.
    pub budget_percent: f64,
    /// Default 3.
    pub min_retry_concurrency: u32,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
            retry_budget: None,
            max_connections_per_host: None,
        }
    }
}

/// `config.core.v3.HealthCheck`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub timeout: Duration,
    pub interval: Duration,
    /// A random extra delay in `[0, interval_jitter)` added to each interval.
    pub interval_jitter: Duration,
    /// Accepted for Envoy compatibility; Strait checks at `interval` whether or not
    /// the cluster has traffic.
    pub no_traffic_interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub kind: HealthCheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    Http(HttpHealthCheck),
    /// Empty `send` and `receive`: connect only.
    Tcp {
        send: Vec<u8>,
        receive: Vec<Vec<u8>>,
    },
    /// `grpc.health.v1.Health/Check` over h2c.
    Grpc {
        service_name: String,
        /// `:authority`; the cluster name when unset, as in Envoy.
        authority: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpHealthCheck {
    pub path: String,
    /// `Host` / `:authority`; the cluster name when unset, as in Envoy.
    pub host: Option<String>,
    /// Half-open ranges `[start, end)`; default `[200, 201)`.
    pub expected_statuses: Vec<(u16, u16)>,
    /// Added to every check request (names lower-case; append semantics do not matter
    /// on a request that carries no other headers but `host` and `user-agent`).
    pub request_headers_to_add: Vec<(HeaderName, HeaderValue)>,
    pub http2: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// Envoy's AUTO: IPv6 if any, else IPv4.
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// An IP literal for STATIC; a host name or IP for the DNS types.
    pub host: String,
    pub port: u16,
    /// The host's name, what a route's `auto_host_rewrite` puts in `Host`: the
    /// endpoint's `hostname`, else for the DNS types the name resolved, else (STATIC)
    /// none, and the request's `Host` stays. As Envoy names its hosts.
    pub hostname: String,
    /// `load_balancing_weight`, default 1.
    pub weight: u32,
    /// The `priority` of its `LocalityLbEndpoints` (0 is the highest).
    pub priority: u32,
    /// Index of its `LocalityLbEndpoints` entry (its locality) and that entry's
    /// `load_balancing_weight` (default 1), for locality-weighted balancing.
    pub locality: u32,
    pub locality_weight: u32,
    /// `health_status`, the health the config (EDS) gives the endpoint.
    pub health: EdsHealth,
    /// `metadata.filter_metadata` (`xds.upstream_host_metadata` for plugins).
    pub metadata: Metadata,
}

/// An endpoint's configured (EDS) health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EdsHealth {
    #[default]
    Healthy,
    /// `UNHEALTHY` or `TIMEOUT`: never picked outside panic (`/failed_eds_health`).
    Unhealthy,
    /// `DRAINING`: excluded from load balancing, even in panic, and from the host
    /// counts that decide panic (`/eds_status_draining`).
    Draining,
}

// ---------------------------------------------------------------- request view

/// What route matching needs to know about a request; borrowed, so matching allocates
/// nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The `:authority` / Host, as received (may include a port).
    pub host: &'a str,
    /// Path and query, as received (e.g. `/a/b?x=1`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// A CONNECT request: Envoy matches it only against routes with a
    /// `connect_matcher`, which the translator refuses, so it matches none.
    pub connect: bool,
}
