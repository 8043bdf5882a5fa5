//! The conformance harness: an echo backend, a launcher for Strait and Envoy, config
//! rewriting, a one-shot HTTP client and the comparison of two answers.
//!
//! Self-contained on purpose (it does not use `tests/common/`). Shared by
//! `conformance.rs` and `wasm_conformance.rs`, which use different parts of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value as Json};
use serde_yaml::Value as Yaml;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a proxy may take to start, and a request to be answered.
const START_DEADLINE: Duration = Duration::from_secs(30);
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Request headers the echo backend understands.
pub const ECHO_STATUS: &str = "x-echo-status";
pub const ECHO_DELAY_MS: &str = "x-echo-delay-ms";
/// `name: value`, added to the backend's response.
pub const ECHO_RESPONSE_HEADER: &str = "x-echo-response-header";

// ------------------------------------------------------------------ locating binaries

/// The Envoy binary: `$ENVOY_BIN`, else the venv `.ci/install-envoy` creates, else `envoy`
/// on `PATH`.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ENVOY_BIN={} does not exist",
            path.display()
        );
        return Some(path);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = Path::new(&home).join(".cache/strait-envoy-venv/bin/envoy");
        if venv.is_file() {
            return Some(venv);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file())
}

pub fn strait_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strait"))
}

pub fn examples_dir() -> PathBuf {
    // Read when the test runs: see `wasm_example.rs`.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../examples")
}

// ------------------------------------------------------------------ temp dir

/// A fresh directory under the system temp dir, removed on drop (kept when
/// `STRAIT_CONFORMANCE_KEEP` is set, for debugging).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "strait-conformance-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("STRAIT_CONFORMANCE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

// ------------------------------------------------------------------ echo backend

/// An HTTP/1.1 + h2c server answering every request with a JSON description of it.
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn spawn(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let shared: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(name.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, task }
    }
}

/// Whether `text` looks like a generated request id (a UUID).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The backend's answer: `backend`, `version`, `method`, `path`, `authority` (`host` or
/// `:authority`), the other request `headers` (names lower-case; a generated UUID
/// `x-request-id` shown as `<uuid>`; `x-envoy-*` apart in `envoy_headers`, since they are
/// Envoy-internal and only reported) and the request `body`.
async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == GRPC_ECHO_STREAM {
        return Ok(grpc_stream_echo(&parts.headers, body));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Only the wasm tests' own service answers in gRPC; other gRPC requests get the
    // JSON echo, so the comparison sees what the backend received.
    let grpc = parts.uri.path().starts_with(GRPC_ECHO_SERVICE);
    if grpc {
        return Ok(grpc_echo(&parts.headers, body).await);
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut envoy_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in &parts.headers {
        let key = key.as_str();
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if key.starts_with("x-envoy-") {
            envoy_headers.entry(key.to_string()).or_default().push(text);
        } else if key == "x-request-id" && is_uuid(&text) {
            headers
                .entry(key.to_string())
                .or_default()
                .push("<uuid>".into());
        } else if key != "host" {
            headers.entry(key.to_string()).or_default().push(text);
        }
    }
    let authority = parts
        .headers
        .get("host")
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let seen = json!({
        "backend": &*name,
        "version": format!("{:?}", parts.version),
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("", |p| p.as_str()),
        "authority": authority,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "envoy_headers": envoy_headers,
    });
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header(ECHO_DELAY_MS).and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut response = Response::new(EchoBody {
        data: Some(Bytes::from(seen.to_string())),
        stream: None,
        trailers: None,
    });
    if let Some(status) = header(ECHO_STATUS).and_then(|v| v.parse::<u16>().ok()) {
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    }
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some((key, value)) = header(ECHO_RESPONSE_HEADER).and_then(|v| v.split_once(':')) {
        if let (Ok(key), Ok(value)) = (
            HeaderName::from_bytes(key.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            response.headers_mut().append(key, value);
        }
    }
    Ok(response)
}

/// Requests to this gRPC service get a gRPC answer ([`grpc_echo`]).
pub const GRPC_ECHO_SERVICE: &str = "/strait.test.Echo/";
/// Its streaming method: each message is echoed back as it arrives.
pub const GRPC_ECHO_STREAM: &str = "/strait.test.Echo/Chat";

/// A gRPC stream answer: headers at once, every request message echoed as it
/// arrives, then `grpc-status` (from `x-grpc-echo-status`, default OK) when the
/// client half-closes.
fn grpc_stream_echo(headers: &hyper::HeaderMap, body: Incoming) -> Response<EchoBody> {
    let status = headers
        .get("x-grpc-echo-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        HeaderValue::from_str(status).expect("status"),
    );
    let mut response = Response::new(EchoBody {
        data: None,
        stream: Some(body),
        trailers: Some(trailers),
    });
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A gRPC answer to a gRPC request: the request's message echoed back, with
/// `grpc-status` / `grpc-message` from the request metadata `x-grpc-echo-status` /
/// `x-grpc-echo-message` (default OK), after `x-echo-delay-ms`.
async fn grpc_echo(headers: &hyper::HeaderMap, body: Bytes) -> Response<EchoBody> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header(ECHO_DELAY_MS).and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut trailers = hyper::HeaderMap::new();
    let status = header("x-grpc-echo-status").unwrap_or("0");
    trailers.insert(
        "grpc-status",
        HeaderValue::from_str(status).expect("status"),
    );
    if let Some(message) = header("x-grpc-echo-message") {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_str(message).expect("message"),
        );
    }
    let mut response = Response::new(EchoBody {
        data: Some(body),
        stream: None,
        trailers: Some(trailers),
    });
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// The echo backend's body: data, then trailers (for gRPC).
pub struct EchoBody {
    data: Option<Bytes>,
    /// Streamed back frame by frame (a gRPC stream echo), before the trailers.
    stream: Option<Incoming>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        while let Some(stream) = self.stream.as_mut() {
            match std::pin::Pin::new(stream).poll_frame(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                    }
                }
                std::task::Poll::Ready(_) => self.stream = None,
            }
        }
        let frame = self.trailers.take().map(hyper::body::Frame::trailers);
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.stream.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.data, &self.trailers) {
            _ if self.stream.is_some() => hyper::body::SizeHint::default(),
            (data, None) => {
                hyper::body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => hyper::body::SizeHint::default(),
        }
    }
}

/// A local port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

// ------------------------------------------------------------------ config rewriting

/// An example rewritten for the test: listeners and admin on 127.0.0.1:0, every cluster
/// endpoint on an echo backend (or a closed port for the clusters named `down`).
pub struct Prepared {
    pub config: PathBuf,
    pub listeners: Vec<String>,
    /// Kept alive for as long as the proxies run.
    pub _backends: Vec<Backend>,
}

fn field<'a>(value: &'a mut Yaml, key: &str) -> Option<&'a mut Yaml> {
    value.as_mapping_mut()?.get_mut(key)
}

fn seq<'a>(value: &'a mut Yaml, key: &str) -> impl Iterator<Item = &'a mut Yaml> {
    field(value, key)
        .and_then(Yaml::as_sequence_mut)
        .into_iter()
        .flatten()
}

fn set_socket_address(address: &mut Yaml, port: u16) {
    let socket = field(address, "socket_address").expect("socket_address");
    let socket = socket
        .as_mapping_mut()
        .expect("socket_address is a mapping");
    socket.insert("address".into(), "127.0.0.1".into());
    socket.insert("port_value".into(), port.into());
}

/// Points file access logs that are not `/dev/stdout`/`/dev/stderr` into `dir`.
fn redirect_access_logs(value: &mut Yaml, dir: &Path) {
    match value {
        Yaml::Mapping(map) => {
            let is_file_log = map
                .get("@type")
                .and_then(Yaml::as_str)
                .is_some_and(|t| t.ends_with(".FileAccessLog"));
            if is_file_log {
                let path = map.get("path").and_then(Yaml::as_str).unwrap_or("");
                if !path.starts_with("/dev/") {
                    let log = dir.join("access.log").display().to_string();
                    map.insert("path".into(), log.into());
                }
            }
            for (_, child) in map.iter_mut() {
                redirect_access_logs(child, dir);
            }
        }
        Yaml::Sequence(items) => items.iter_mut().for_each(|v| redirect_access_logs(v, dir)),
        _ => {}
    }
}

pub async fn prepare_file(source: &Path, dir: &Path, down: &[&str]) -> Prepared {
    let example = source
        .file_name()
        .and_then(|n| n.to_str())
        .expect("config file name");
    let text = std::fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    let mut doc: Yaml = serde_yaml::from_str(&text).expect("example is YAML");

    if let Some(admin) = field(&mut doc, "admin").and_then(|a| field(a, "address")) {
        set_socket_address(admin, 0);
    }
    let resources = field(&mut doc, "static_resources").expect("static_resources");
    let mut listeners = Vec::new();
    for listener in seq(resources, "listeners") {
        set_socket_address(field(listener, "address").expect("listener address"), 0);
        let name = field(listener, "name")
            .and_then(|n| n.as_str())
            .expect("listener name");
        listeners.push(name.to_string());
    }
    let mut backends = Vec::new();
    for cluster in seq(resources, "clusters") {
        let name = field(cluster, "name")
            .and_then(|n| n.as_str())
            .expect("cluster name");
        let name = name.to_string();
        let mut endpoints: Vec<&mut Yaml> = field(cluster, "load_assignment")
            .map(|la| {
                seq(la, "endpoints")
                    .flat_map(|l| seq(l, "lb_endpoints"))
                    .collect()
            })
            .unwrap_or_default();
        let several = endpoints.len() > 1;
        for (i, endpoint) in endpoints.iter_mut().enumerate() {
            let port = if down.contains(&name.as_str()) {
                closed_port().await
            } else {
                let label = if several {
                    format!("{name}#{i}")
                } else {
                    name.clone()
                };
                let backend = Backend::spawn(&label).await;
                let port = backend.addr.port();
                backends.push(backend);
                port
            };
            let address = field(endpoint, "endpoint")
                .and_then(|e| field(e, "address"))
                .expect("lb_endpoint.endpoint.address");
            set_socket_address(address, port);
        }
    }
    redirect_access_logs(&mut doc, dir);

    let config = dir.join(example);
    // Written as JSON (which is YAML too): re-emitted YAML could unquote strings such as
    // "yes" that Envoy's YAML 1.1 parser would then read as booleans.
    let json = serde_json::to_string_pretty(&doc).expect("serialize config");
    std::fs::write(&config, json).expect("write config");
    Prepared {
        config,
        listeners,
        _backends: backends,
    }
}

// ------------------------------------------------------------------ launcher

/// A running proxy (Strait or Envoy), killed on drop.
pub struct Proxy {
    child: Child,
    pub admin: SocketAddr,
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Proxy {
    /// Starts `program` on `config` and waits (bounded) until its admin says it is ready
    /// and reports a bound port for every listener in `listeners`.
    pub async fn start(
        kind: &'static str,
        program: &Path,
        config: &Path,
        listeners: &[String],
        dir: &Path,
    ) -> Result<Proxy, String> {
        let address_path = dir.join(format!("{kind}.admin"));
        let stderr_path = dir.join(format!("{kind}.stderr"));
        let stdout_path = dir.join(format!("{kind}.stdout"));
        let mut command = Command::new(program);
        command
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "--log-level", "warn"])
            .arg("--admin-address-path")
            .arg(&address_path);
        if kind == "envoy" {
            // No shared memory, so parallel Envoys never collide on a base id.
            command.arg("--disable-hot-restart");
        }
        let stdout = std::fs::File::create(&stdout_path).map_err(|e| e.to_string())?;
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        let mut proxy = Proxy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: BTreeMap::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        let mut last = String::from("admin address file not written");
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(format!(
                    "{kind} exited with {status} before it was ready:\n{}",
                    tail(&stderr_path)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{kind} not ready within {START_DEADLINE:?} ({last}):\n{}",
                    tail(&stderr_path)
                ));
            }
            match proxy.poll_ready(&address_path, listeners).await {
                Ok(()) => return Ok(proxy),
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn poll_ready(
        &mut self,
        address_path: &Path,
        listeners: &[String],
    ) -> Result<(), String> {
        let text = std::fs::read_to_string(address_path).map_err(|e| e.to_string())?;
        self.admin = text
            .trim()
            .parse()
            .map_err(|e| format!("admin address {text:?}: {e}"))?;
        let ready = send(self.admin, &Req::get("/ready")).await?;
        if ready.status != 200 || ready.body.as_ref() != b"LIVE\n" {
            return Err(format!("/ready answered {} {:?}", ready.status, ready.body));
        }
        let answer = send(self.admin, &Req::get("/listeners?format=json")).await?;
        let statuses: Json = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        let mut bound = BTreeMap::new();
        for status in statuses["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let socket = &status["local_address"]["socket_address"];
            let (Some(name), Some(ip), Some(port)) = (
                status["name"].as_str(),
                socket["address"].as_str(),
                socket["port_value"].as_u64(),
            ) else {
                continue;
            };
            if port != 0 {
                let ip = ip
                    .parse()
                    .map_err(|e| format!("listener address {ip}: {e}"))?;
                bound.insert(name.to_string(), SocketAddr::new(ip, port as u16));
            }
        }
        if let Some(missing) = listeners.iter().find(|l| !bound.contains_key(*l)) {
            return Err(format!("listener {missing} has no bound port yet"));
        }
        self.listeners = bound;
        Ok(())
    }
}

// ------------------------------------------------------------------ client

/// The `host` (or `:authority`) of requests that do not set one.
pub const DEFAULT_HOST: &str = "localhost";

/// One request of a case table.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub h2: bool,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            path: path.to_string(),
            host: None,
            headers: Vec::new(),
            body: String::new(),
            h2: false,
        }
    }

    pub fn post(path: &str, body: &str) -> Req {
        Req {
            method: Method::POST,
            body: body.to_string(),
            ..Req::get(path)
        }
    }

    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn h2(mut self) -> Req {
        self.h2 = true;
        self
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{} {} host={} via {}",
            self.method,
            self.path,
            self.host.as_deref().unwrap_or(DEFAULT_HOST),
            if self.h2 { "h2c" } else { "HTTP/1.1" }
        );
        for (name, value) in &self.headers {
            let _ = write!(text, " [{name}: {value}]");
        }
        if !self.body.is_empty() {
            let _ = write!(text, " body={:?}", self.body);
        }
        text
    }
}

/// An answer, headers lower-case in order of name.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Bytes,
}

impl Resp {
    fn describe(&self) -> String {
        let mut text = format!("{}", self.status);
        for (name, values) in &self.headers {
            for value in values {
                let _ = write!(text, "\n      {name}: {value}");
            }
        }
        let _ = write!(
            text,
            "\n      body: {}",
            String::from_utf8_lossy(&self.body)
        );
        text
    }
}

/// Sends `req` to `addr` on a new connection; bounded by [`REQUEST_DEADLINE`].
pub async fn send(addr: SocketAddr, req: &Req) -> Result<Resp, String> {
    match tokio::time::timeout(REQUEST_DEADLINE, send_inner(addr, req)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {REQUEST_DEADLINE:?}")),
    }
}

async fn send_inner(addr: SocketAddr, req: &Req) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let io = TokioIo::new(stream);
    let authority = req.host.as_deref().unwrap_or(DEFAULT_HOST);
    let mut builder = Request::builder().method(req.method.clone());
    builder = if req.h2 {
        builder
            .uri(format!("http://{authority}{}", req.path))
            .version(Version::HTTP_2)
    } else {
        builder.uri(&req.path).header("host", authority)
    };
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| e.to_string())?;
    let response = if req.h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Ok(Resp {
        status: parts.status.as_u16(),
        headers,
        body,
    })
}

// ------------------------------------------------------------------ cases and comparison

/// What Envoy (the reference) is expected to do with a case's request; checked so that
/// a table entry cannot silently test nothing.
#[derive(Clone, Debug)]
pub enum Want {
    /// A local reply (redirect, direct response, error) with this status.
    Local(u16),
    /// Forwarded to one of these backends (echo `backend` names), answered with status.
    Backend(u16, &'static [&'static str]),
    /// No HTTP answer: the proxy closes the connection (e.g. a network filter does).
    Closed,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    /// Listener to send to; `None` means the first one of the file.
    pub listener: Option<&'static str>,
    pub req: Req,
    pub want: Want,
    /// Response headers whose differences are known and reported as notes.
    pub known_differences: &'static [&'static str],
}

impl Case {
    pub fn new(name: &'static str, req: Req, want: Want) -> Case {
        Case {
            name,
            listener: None,
            req,
            want,
            known_differences: &[],
        }
    }

    /// Reports differences in these response headers as notes, not failures.
    pub fn known_differences(mut self, headers: &'static [&'static str]) -> Case {
        self.known_differences = headers;
        self
    }
}

/// Response headers never compared: they vary per run or per implementation by design.
const IGNORED_RESPONSE_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

/// The outcome of one case: `problems` are conformance failures, `notes` are differences
/// in Envoy-internal details (`x-envoy-*` headers) reported but not failed on.
#[derive(Default)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

fn backend_of(resp: &Resp) -> Option<(String, Json)> {
    let mut echo: Json = serde_json::from_slice(&resp.body).ok()?;
    let name = echo.get("backend")?.as_str()?.to_string();
    echo.as_object_mut()?.remove("backend");
    Some((name, echo))
}

fn json_diff(path: &str, envoy: &Json, strait: &Json, out: &mut Vec<String>) {
    match (envoy, strait) {
        (Json::Object(e), Json::Object(s)) => {
            let keys: BTreeSet<&String> = e.keys().chain(s.keys()).collect();
            for key in keys {
                let null = Json::Null;
                let (ev, sv) = (e.get(key).unwrap_or(&null), s.get(key).unwrap_or(&null));
                json_diff(&format!("{path}.{key}"), ev, sv, out);
            }
        }
        (e, s) if e != s => out.push(format!("echo{path}: envoy {e}, strait {s}")),
        _ => {}
    }
}

pub fn compare(case: &Case, envoy: &Resp, strait: &Resp) -> Verdict {
    let mut verdict = Verdict::default();
    let problems = &mut verdict.problems;
    if envoy.status != strait.status {
        problems.push(format!(
            "status: envoy {}, strait {}",
            envoy.status, strait.status
        ));
    }
    let (envoy_echo, strait_echo) = (backend_of(envoy), backend_of(strait));
    // Table sanity: Envoy must do what the case says.
    match (&case.want, &envoy_echo) {
        (Want::Local(status), None) if *status == envoy.status => {}
        (Want::Backend(status, names), Some((name, _)))
            if *status == envoy.status && names.contains(&name.as_str()) => {}
        (want, _) => problems.push(format!(
            "case table: Envoy's answer does not match {want:?} (fix the table or the example)"
        )),
    }
    let same_body = envoy.body == strait.body;
    match (&case.want, &envoy_echo, &strait_echo) {
        (Want::Backend(_, names), Some((en, ee)), Some((sn, se))) => {
            if !names.contains(&sn.as_str()) {
                problems.push(format!(
                    "backend: strait chose {sn}, expected one of {names:?}"
                ));
            }
            if en == sn {
                let (mut ee, mut se) = (ee.clone(), se.clone());
                let (eh, sh) = (ee["envoy_headers"].take(), se["envoy_headers"].take());
                if eh != sh {
                    verdict.notes.push(format!(
                        "x-envoy-* request headers: envoy {eh}, strait {sh}"
                    ));
                }
                json_diff("", &ee, &se, problems);
            } else {
                // Different (allowed) picks: their echoes legitimately differ.
                return verdict;
            }
        }
        _ => {
            if !same_body {
                problems.push(format!(
                    "body: envoy {:?}, strait {:?}",
                    String::from_utf8_lossy(&envoy.body),
                    String::from_utf8_lossy(&strait.body)
                ));
            }
        }
    }
    let names: BTreeSet<&String> = envoy.headers.keys().chain(strait.headers.keys()).collect();
    for name in names {
        if IGNORED_RESPONSE_HEADERS.contains(&name.as_str())
            || (name == "content-length" && !same_body)
        {
            continue;
        }
        let (e, s) = (envoy.headers.get(name), strait.headers.get(name));
        if e != s {
            let line = format!("response header {name}: envoy {e:?}, strait {s:?}");
            if name.starts_with("x-envoy-") || case.known_differences.contains(&name.as_str()) {
                verdict.notes.push(line);
            } else {
                problems.push(line);
            }
        }
    }
    verdict
}

// ------------------------------------------------------------------ running an example

/// Runs `cases` against Strait and Envoy, both on `example` rewritten for the test (the
/// clusters in `down` point at a closed port), and panics listing every difference.
pub async fn run_example(example: &str, down: &[&str], cases: Vec<Case>) {
    run_file(&examples_dir().join(example), down, cases).await
}

/// As `run_example`, for a config file anywhere.
pub async fn run_file(source: &Path, down: &[&str], cases: Vec<Case>) {
    let Some(envoy_bin) = envoy_binary() else {
        println!("SKIPPED: envoy not found (run .ci/install-envoy)");
        return;
    };
    let example = source
        .file_name()
        .and_then(|n| n.to_str())
        .expect("config file name");
    let dir = TempDir::new(example.trim_end_matches(".yaml"));
    let prepared = prepare_file(source, dir.path(), down).await;
    let strait_bin = strait_binary();
    let (envoy, strait) = tokio::join!(
        Proxy::start(
            "envoy",
            &envoy_bin,
            &prepared.config,
            &prepared.listeners,
            dir.path()
        ),
        Proxy::start(
            "strait",
            &strait_bin,
            &prepared.config,
            &prepared.listeners,
            dir.path()
        ),
    );
    let envoy = envoy.unwrap_or_else(|e| panic!("{example}: Envoy rejected or failed: {e}"));
    let strait = strait.unwrap_or_else(|e| panic!("{example}: Strait rejected or failed: {e}"));

    let mut failures = Vec::new();
    let mut report = String::new();
    for (i, case) in cases.iter().enumerate() {
        let listener = case.listener.map_or(&prepared.listeners[0], |l| {
            prepared
                .listeners
                .iter()
                .find(|n| *n == l)
                .expect("case listener exists")
        });
        let answer = |proxy: &Proxy| proxy.listeners[listener];
        let (e, s) = (
            send(answer(&envoy), &case.req).await,
            send(answer(&strait), &case.req).await,
        );
        let title = format!("{example} #{i} {}: {}", case.name, case.req.describe());
        let verdict = match (&e, &s) {
            (Ok(e), Ok(s)) => compare(case, e, s),
            (Err(_), Err(_)) if matches!(case.want, Want::Closed) => Verdict::default(),
            _ => Verdict {
                problems: vec![format!(
                    "transport: envoy {:?}, strait {:?}",
                    e.as_ref().err(),
                    s.as_ref().err()
                )],
                notes: Vec::new(),
            },
        };
        let mark = if verdict.problems.is_empty() {
            "ok  "
        } else {
            "DIFF"
        };
        let _ = writeln!(report, "{mark} {title}");
        for note in &verdict.notes {
            let _ = writeln!(report, "     note: {note}");
        }
        if !verdict.problems.is_empty() {
            let mut text = format!("{title}\n");
            for problem in &verdict.problems {
                let _ = writeln!(text, "   - {problem}");
            }
            if let (Ok(e), Ok(s)) = (&e, &s) {
                let _ = writeln!(text, "   envoy:  {}", e.describe());
                let _ = writeln!(text, "   strait: {}", s.describe());
            }
            let _ = write!(report, "{text}");
            failures.push(text);
        }
    }
    drop((envoy, strait, prepared));
    println!("{report}");
    println!(
        "{example}: {} of {} requests answered alike",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{example}: {} of {} requests answered differently by Strait and Envoy:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
