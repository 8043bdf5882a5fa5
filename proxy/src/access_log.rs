//! Access logs: Envoy's substitution format language rendered from a `LogRecord`, and
//! sinks that write without blocking the workers.
//!
//! A worker renders each line into a thread-local buffer (no allocation once warm) and
//! copies it into a bounded channel (16 384 lines) served by one background thread per
//! sink (stdout, stderr or one file). When the channel is full the line is dropped and
//! counted rather than stalling the worker on a slow disk. The writer batches: it
//! writes everything queued into a 64 KiB buffer and flushes when the queue drains, and
//! at least once a second under sustained load.
//!
//! `%START_TIME(...)%` understands these strftime specifiers (UTC only): `%Y %y %m %d %e
//! %H %M %S %T %F %a %b %s %z %Z %%`, and for fractions of a second `%f` (9 digits),
//! `%1f`..`%9f` and Envoy's `%E1S`..`%E9S` (seconds with that many decimals). Any
//! other specifier is copied as written.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use parking_lot::Mutex;
use strait_xds::model::{
    AccessLog, AccessLogSink, FormatCommand, FormatPiece, JsonValueTemplate, LogFormat,
};

/// Lines queued per sink before new lines are dropped.
const QUEUE_LINES: usize = 16 * 1024;
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

/// Everything the formatter can print about one finished stream.
#[derive(Debug, Clone)]
pub struct LogRecord<'a> {
    pub start_time: SystemTime,
    pub request_headers: &'a HeaderMap,
    pub method: &'a str,
    /// Original path and query, as received.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    /// "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
    pub protocol: &'a str,
    pub response_headers: Option<&'a HeaderMap>,
    pub response_trailers: Option<&'a HeaderMap>,
    /// 0 when no response was sent.
    pub status: u16,
    /// e.g. "UF,URX"; "" renders as "-".
    pub response_flags: &'a str,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub request_duration: Option<Duration>,
    pub response_duration: Option<Duration>,
    pub upstream_host: Option<SocketAddr>,
    /// The cluster's observability name (`alt_stat_name`, else its name).
    pub upstream_cluster: Option<&'a str>,
    /// The cluster's own name.
    pub upstream_cluster_raw: Option<&'a str>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_failure: Option<&'a str>,
    /// The client address after `x-forwarded-for` processing.
    pub downstream_remote: SocketAddr,
    /// The peer address of the connection.
    pub downstream_direct_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub route_name: &'a str,
}

/// One command's value: `Missing` prints `-` (or `null` alone in a JSON value).
enum Value<'a> {
    Missing,
    Bytes(&'a [u8]),
    Num(u64),
    Addr(SocketAddr),
    Ip(IpAddr),
    Time(SystemTime, &'a str),
}

/// Appends one rendered line to `out`. Text formats carry their own newline (Envoy adds
/// none); a JSON object is followed by `\n`.
pub fn render(format: &LogFormat, rec: &LogRecord, out: &mut Vec<u8>) {
    match format {
        LogFormat::Text(pieces) => render_pieces(pieces, rec, out),
        LogFormat::Json(fields) => {
            render_object(fields, rec, out);
            out.push(b'\n');
        }
    }
}

/// Renders a text format over a request still in flight (`set_filter_state`): the
/// request's commands have their values; response, upstream and size commands
/// print `-` (or 0), as Envoy's formatter does before there is a response.
pub fn render_request(
    pieces: &[FormatPiece],
    head: &strait_filters::RequestHead,
    guard: &crate::stream::StreamGuard,
    out: &mut Vec<u8>,
) {
    let elapsed = guard.start().elapsed();
    let authority = match head.uri.authority() {
        Some(authority) => authority.as_str(),
        None => head
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    };
    let rec = LogRecord {
        start_time: SystemTime::now() - elapsed,
        request_headers: &head.headers,
        method: head.method.as_str(),
        path: head.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority,
        scheme: head.uri.scheme_str().unwrap_or("http"),
        protocol: match head.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        },
        response_headers: None,
        response_trailers: None,
        status: 0,
        response_flags: "",
        response_code_details: "",
        bytes_received: 0,
        bytes_sent: 0,
        duration: elapsed,
        request_duration: None,
        response_duration: None,
        upstream_host: None,
        upstream_cluster: None,
        upstream_cluster_raw: None,
        upstream_local: None,
        upstream_failure: None,
        downstream_remote: guard.peer,
        downstream_direct_remote: guard.peer,
        downstream_local: guard.local,
        route_name: "",
    };
    render_pieces(pieces, &rec, out);
}

fn render_pieces(pieces: &[FormatPiece], rec: &LogRecord, out: &mut Vec<u8>) {
    for piece in pieces {
        match piece {
            FormatPiece::Literal(text) => out.extend_from_slice(text.as_bytes()),
            FormatPiece::Command(command) => write_text(&eval(command, rec), out),
        }
    }
}

fn render_object(fields: &[(String, JsonValueTemplate)], rec: &LogRecord, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (key, template)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(key.as_bytes(), out);
        out.push(b':');
        match template {
            // Writing a `serde_json::Value` into a Vec cannot fail.
            JsonValueTemplate::Literal(value) => _ = serde_json::to_writer(&mut *out, value),
            JsonValueTemplate::Object(fields) => render_object(fields, rec, out),
            JsonValueTemplate::Format(pieces) => match pieces.as_slice() {
                [FormatPiece::Command(command)] => match eval(command, rec) {
                    Value::Missing => out.extend_from_slice(b"null"),
                    Value::Num(n) => _ = write!(out, "{n}"),
                    value => json_text(out, |s| write_text(&value, s)),
                },
                pieces => json_text(out, |s| render_pieces(pieces, rec, s)),
            },
        }
    }
    out.push(b'}');
}

thread_local! {
    /// Scratch for JSON string values rendered from templates.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Renders with `fill` into scratch space, then appends it to `out` as a JSON string.
fn json_text(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    // `fill` only renders text (never JSON), so SCRATCH is not borrowed twice.
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        fill(scratch);
        json_string(scratch, out);
    });
}

/// Header values may hold obs-text bytes; JSON gets them as U+FFFD.
fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    // Serializing a string into a Vec cannot fail.
    _ = serde_json::to_writer(out, &String::from_utf8_lossy(bytes));
}

fn write_text(value: &Value, out: &mut Vec<u8>) {
    // Formatting into a Vec cannot fail.
    match value {
        Value::Missing => out.push(b'-'),
        Value::Bytes(bytes) => out.extend_from_slice(bytes),
        Value::Num(n) => _ = write!(out, "{n}"),
        Value::Addr(addr) => _ = write!(out, "{addr}"),
        Value::Ip(ip) => _ = write!(out, "{ip}"),
        Value::Time(time, format) => write_time(*time, format, out),
    }
}

fn eval<'a>(command: &'a FormatCommand, rec: &'a LogRecord) -> Value<'a> {
    use FormatCommand as C;
    let text = |s: &'a str| {
        if s.is_empty() {
            Value::Missing
        } else {
            Value::Bytes(s.as_bytes())
        }
    };
    let millis = |d: Duration| Value::Num(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let addr = |a: Option<SocketAddr>| a.map_or(Value::Missing, Value::Addr);
    match command {
        C::StartTime(format) => Value::Time(
            rec.start_time,
            format.as_deref().unwrap_or(DEFAULT_TIME_FORMAT),
        ),
        C::Req { main, alt, max_len } => {
            let value = request_header(rec, main).or_else(|| request_header(rec, alt.as_deref()?));
            truncated(value, *max_len)
        }
        C::Resp { main, alt, max_len } => {
            header(rec.response_headers, main, alt.as_deref(), *max_len)
        }
        C::Trailer { main, alt, max_len } => {
            header(rec.response_trailers, main, alt.as_deref(), *max_len)
        }
        C::Protocol => text(rec.protocol),
        C::ResponseCode => Value::Num(rec.status.into()),
        C::ResponseCodeDetails => text(rec.response_code_details),
        // Envoy prints "-" for no flags, also as a JSON string.
        C::ResponseFlags if rec.response_flags.is_empty() => Value::Bytes(b"-"),
        C::ResponseFlags => text(rec.response_flags),
        C::BytesReceived => Value::Num(rec.bytes_received),
        C::BytesSent => Value::Num(rec.bytes_sent),
        C::Duration => millis(rec.duration),
        C::RequestDuration => rec.request_duration.map_or(Value::Missing, millis),
        C::ResponseDuration => rec.response_duration.map_or(Value::Missing, millis),
        C::UpstreamHost => addr(rec.upstream_host),
        C::UpstreamCluster => rec.upstream_cluster.map_or(Value::Missing, text),
        C::UpstreamClusterRaw => rec.upstream_cluster_raw.map_or(Value::Missing, text),
        C::UpstreamLocalAddress => addr(rec.upstream_local),
        C::UpstreamTransportFailureReason => rec.upstream_failure.map_or(Value::Missing, text),
        C::DownstreamRemoteAddress => Value::Addr(rec.downstream_remote),
        C::DownstreamRemoteAddressWithoutPort => Value::Ip(rec.downstream_remote.ip()),
        C::DownstreamLocalAddress => Value::Addr(rec.downstream_local),
        C::DownstreamLocalAddressWithoutPort => Value::Ip(rec.downstream_local.ip()),
        C::DownstreamDirectRemoteAddress => Value::Addr(rec.downstream_direct_remote),
        C::RouteName => text(rec.route_name),
        C::Hostname => Value::Bytes(hostname().as_bytes()),
    }
}

/// A request header; the pseudo headers come from the record. Header lookups are
/// case-insensitive; of a repeated header the first value is printed.
fn request_header<'a>(rec: &'a LogRecord, name: &str) -> Option<&'a [u8]> {
    let non_empty = |s: &'a str| (!s.is_empty()).then_some(s.as_bytes());
    let pseudo = |p: &str| name.len() == p.len() + 1 && name[1..].eq_ignore_ascii_case(p);
    if name.starts_with(':') {
        return match () {
            _ if pseudo("method") => non_empty(rec.method),
            _ if pseudo("path") => non_empty(rec.path),
            _ if pseudo("scheme") => non_empty(rec.scheme),
            _ if pseudo("authority") => {
                non_empty(rec.authority).or_else(|| header_bytes(rec.request_headers, "host"))
            }
            _ => None,
        };
    }
    let value = header_bytes(rec.request_headers, name);
    if value.is_none() && name.eq_ignore_ascii_case("host") {
        // HTTP/2 requests carry the host only as :authority.
        return non_empty(rec.authority);
    }
    value
}

fn header<'a>(
    headers: Option<&'a HeaderMap>,
    main: &str,
    alt: Option<&str>,
    max_len: Option<usize>,
) -> Value<'a> {
    let value = headers.and_then(|h| header_bytes(h, main).or_else(|| header_bytes(h, alt?)));
    truncated(value, max_len)
}

/// An invalid header name finds nothing rather than failing.
fn header_bytes<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

/// Envoy truncates to `max_len` bytes.
fn truncated(value: Option<&[u8]>, max_len: Option<usize>) -> Value<'_> {
    match (value, max_len) {
        (None, _) => Value::Missing,
        (Some(v), Some(n)) => Value::Bytes(&v[..v.len().min(n)]),
        (Some(v), None) => Value::Bytes(v),
    }
}

/// This machine's name, read once.
fn hostname() -> &'static str {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "-".to_owned())
    })
}

// ---------------------------------------------------------------- time

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01; Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-12-07T20:35:07.118Z`), as
/// Envoy's admin prints `last_updated`.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_time(time, "%Y-%m-%dT%H:%M:%S.%3fZ", &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// strftime in UTC for the specifiers listed in the module docs.
fn write_time(time: SystemTime, format: &str, out: &mut Vec<u8>) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, nanos) = (since_epoch.as_secs(), since_epoch.subsec_nanos());
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let fraction = |digits: u32, out: &mut Vec<u8>| {
        let value = nanos / 10u32.pow(9 - digits);
        write!(out, "{value:0width$}", width = digits as usize)
    };
    let bytes = format.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (spec, next) = (bytes[i + 1], bytes.get(i + 2).copied());
        let digit = next.filter(u8::is_ascii_digit).map(|d| u32::from(d - b'0'));
        let mut width = 2;
        // Formatting into a Vec cannot fail.
        _ = match spec {
            b'Y' => write!(out, "{year}"),
            b'y' => write!(out, "{:02}", year.rem_euclid(100)),
            b'm' => write!(out, "{month:02}"),
            b'd' => write!(out, "{day:02}"),
            b'e' => write!(out, "{day:2}"),
            b'H' => write!(out, "{hour:02}"),
            b'M' => write!(out, "{minute:02}"),
            b'S' => write!(out, "{second:02}"),
            b'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            b'F' => write!(out, "{year}-{month:02}-{day:02}"),
            b'a' => out.write_all(WEEKDAYS[(days + 4).rem_euclid(7) as usize].as_bytes()),
            b'b' => out.write_all(MONTHS[month as usize - 1].as_bytes()),
            b's' => write!(out, "{secs}"),
            b'z' => out.write_all(b"+0000"),
            b'Z' => out.write_all(b"UTC"),
            b'%' => out.write_all(b"%"),
            b'f' => fraction(9, out),
            b'1'..=b'9' if next == Some(b'f') => {
                width = 3;
                fraction(u32::from(spec - b'0'), out)
            }
            b'E' if digit.is_some_and(|d| d > 0) && bytes.get(i + 3) == Some(&b'S') => {
                width = 4;
                write!(out, "{second:02}.").and_then(|()| fraction(digit.unwrap_or(3), out))
            }
            _ => out.write_all(&bytes[i..i + 2]),
        };
        i += width;
    }
}

// ---------------------------------------------------------------- sinks

/// Renders and writes one configured access log.
#[derive(Debug, Clone)]
pub struct AccessLogger {
    format: LogFormat,
    sink: Arc<Sink>,
}

impl AccessLogger {
    /// Opens (or shares) the sink; a file that cannot be opened is an error naming it.
    pub fn new(config: &AccessLog, writers: &Writers) -> io::Result<AccessLogger> {
        Ok(AccessLogger {
            format: config.format.clone(),
            sink: writers.sink(&config.sink)?,
        })
    }

    /// Renders `rec` and queues it; never blocks on IO. Drops the line when the sink's
    /// queue is full.
    pub fn log(&self, rec: &LogRecord) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
        }
        // `render` never logs, so LINE is not borrowed twice.
        LINE.with_borrow_mut(|line| {
            line.clear();
            render(&self.format, rec, line);
            self.sink.send(Msg::Line(line.as_slice().into()));
            if line.capacity() > 64 * 1024 {
                line.shrink_to(1024);
            }
        });
    }

    /// Lines this logger's sink dropped because its queue was full.
    pub fn dropped_lines(&self) -> u64 {
        self.sink.dropped.load(Relaxed)
    }
}

enum Msg {
    Line(Box<[u8]>),
    Reopen,
    Flush(SyncSender<()>),
}

#[derive(Debug)]
struct Sink {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl Sink {
    fn send(&self, msg: Msg) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The process-wide set of sinks, one writer thread per distinct destination. Cheap to
/// clone; loggers of several listeners writing to one path share its sink.
#[derive(Debug, Clone, Default)]
pub struct Writers {
    sinks: Arc<Mutex<HashMap<SinkKey, Arc<Sink>>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SinkKey {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Writers {
    pub fn new() -> Writers {
        Writers::default()
    }

    fn sink(&self, config: &AccessLogSink) -> io::Result<Arc<Sink>> {
        let key = match config {
            AccessLogSink::Stdout => SinkKey::Stdout,
            AccessLogSink::Stderr => SinkKey::Stderr,
            AccessLogSink::File(path) => SinkKey::File(path.clone()),
        };
        let mut sinks = self.sinks.lock();
        if let Some(sink) = sinks.get(&key) {
            return Ok(sink.clone());
        }
        let out = Output::open(&key)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(out, rx))?;
        let sink = Arc::new(Sink {
            tx,
            dropped: AtomicU64::new(0),
        });
        sinks.insert(key, sink.clone());
        Ok(sink)
    }

    /// Reopens every file (after log rotation). Lines queued before are written to the
    /// old file. May block briefly if a queue is full.
    pub fn reopen(&self) {
        for sink in self.sinks.lock().values() {
            _ = sink.tx.send(Msg::Reopen);
        }
    }

    /// Writes and flushes everything queued so far, waiting about `timeout` in all (more
    /// if a queue is full and its disk stalls). Returns whether every sink finished in
    /// time. For shutdown.
    pub fn flush_blocking(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let sinks: Vec<Arc<Sink>> = self.sinks.lock().values().cloned().collect();
        let acks: Vec<_> = sinks
            .iter()
            .map(|sink| {
                let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                _ = sink.tx.send(Msg::Flush(ack_tx));
                ack_rx
            })
            .collect();
        acks.iter().all(|ack| {
            let left = deadline.saturating_duration_since(Instant::now());
            ack.recv_timeout(left).is_ok()
        })
    }

    /// Lines dropped by all sinks because their queues were full.
    pub fn dropped_lines(&self) -> u64 {
        self.sinks
            .lock()
            .values()
            .map(|s| s.dropped.load(Relaxed))
            .sum()
    }
}

/// A destination and its write buffer.
struct Output {
    key: SinkKey,
    writer: BufWriter<Box<dyn Write + Send>>,
    /// Set after a write error so a full disk logs one warning, not one per line.
    failing: bool,
}

impl Output {
    fn open(key: &SinkKey) -> io::Result<Output> {
        let inner: Box<dyn Write + Send> = match key {
            SinkKey::Stdout => Box::new(io::stdout()),
            SinkKey::Stderr => Box::new(io::stderr()),
            SinkKey::File(path) => Box::new(open_append(path)?),
        };
        let writer = BufWriter::with_capacity(64 * 1024, inner);
        Ok(Output {
            key: key.clone(),
            writer,
            failing: false,
        })
    }

    fn write(&mut self, line: &[u8]) {
        let result = self.writer.write_all(line);
        self.check(result);
    }

    fn flush(&mut self) {
        let result = self.writer.flush();
        self.check(result);
    }

    fn reopen(&mut self) {
        self.flush();
        if let SinkKey::File(path) = &self.key {
            match open_append(path) {
                Ok(file) => *self.writer.get_mut() = Box::new(file),
                Err(error) => tracing::warn!(target: "access_log", %error, "reopen failed"),
            }
        }
    }

    fn check(&mut self, result: io::Result<()>) {
        match result {
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(target: "access_log", sink = ?self.key, %error, "write failed");
            }
            Err(_) => {}
            Ok(()) => self.failing = false,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            )
        })
}

/// The writer thread: drains the queue into the buffer, flushes when it is empty and at
/// least every `FLUSH_INTERVAL` while it is not; exits when every sender is gone.
fn write_loop(mut out: Output, rx: Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let batch_start = Instant::now();
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            match msg {
                Msg::Line(line) => out.write(&line),
                Msg::Reopen => out.reopen(),
                Msg::Flush(ack) => {
                    out.flush();
                    _ = ack.send(());
                }
            }
            if batch_start.elapsed() >= FLUSH_INTERVAL {
                break;
            }
        }
        out.flush();
    }
    out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use FormatCommand as C;
    use FormatPiece::{Command, Literal};

    fn lit(s: &str) -> FormatPiece {
        Literal(s.to_owned())
    }
    fn req(main: &str, alt: Option<&str>, max_len: Option<usize>) -> FormatPiece {
        let (main, alt) = (main.to_owned(), alt.map(str::to_owned));
        Command(C::Req { main, alt, max_len })
    }
    fn resp(main: &str) -> FormatPiece {
        Command(C::Resp {
            main: main.to_owned(),
            alt: None,
            max_len: None,
        })
    }

    /// 2026-11-24T21:31:02.123456789Z
    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_555_862, 123_456_789)
    }

    fn with_record(f: impl FnOnce(&LogRecord)) {
        let mut request = HeaderMap::new();
        request.insert("user-agent", HeaderValue::from_static("curl/8.0"));
        request.insert("x-request-id", HeaderValue::from_static("abc-123"));
        request.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        let mut response = HeaderMap::new();
        response.insert(
            "x-envoy-upstream-service-time",
            HeaderValue::from_static("7"),
        );
        let rec = LogRecord {
            start_time: start(),
            request_headers: &request,
            method: "GET",
            path: "/a?b=\"c\"",
            authority: "example.com",
            scheme: "http",
            protocol: "HTTP/1.1",
            response_headers: Some(&response),
            response_trailers: None,
            status: 200,
            response_flags: "",
            response_code_details: "via_upstream",
            bytes_received: 0,
            bytes_sent: 12,
            duration: Duration::from_micros(8_900),
            request_duration: Some(Duration::from_millis(1)),
            response_duration: None,
            upstream_host: Some("127.0.0.1:9000".parse().unwrap()),
            upstream_cluster: Some("backend"),
            upstream_cluster_raw: Some("backend"),
            upstream_local: None,
            upstream_failure: None,
            downstream_remote: "[::1]:5000".parse().unwrap(),
            downstream_direct_remote: "[::1]:5000".parse().unwrap(),
            downstream_local: "127.0.0.1:10000".parse().unwrap(),
            route_name: "",
        };
        f(&rec);
    }

    fn text(pieces: Vec<FormatPiece>, rec: &LogRecord) -> String {
        let mut out = Vec::new();
        render(&LogFormat::Text(pieces), rec, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envoy_default_format() {
        let q = || lit("\" \"");
        let format = vec![
            lit("["),
            Command(C::StartTime(None)),
            lit("] \""),
            req(":METHOD", None, None),
            lit(" "),
            req("X-ENVOY-ORIGINAL-PATH", Some(":PATH"), None),
            lit(" "),
            Command(C::Protocol),
            lit("\" "),
            Command(C::ResponseCode),
            lit(" "),
            Command(C::ResponseFlags),
            lit(" "),
            Command(C::BytesReceived),
            lit(" "),
            Command(C::BytesSent),
            lit(" "),
            Command(C::Duration),
            lit(" "),
            resp("X-ENVOY-UPSTREAM-SERVICE-TIME"),
            lit(" \""),
            req("X-FORWARDED-FOR", None, None),
            q(),
            req("USER-AGENT", None, None),
            q(),
            req("X-REQUEST-ID", None, None),
            q(),
            req(":AUTHORITY", None, None),
            q(),
            Command(C::UpstreamHost),
            lit("\"\n"),
        ];
        with_record(|rec| {
            assert_eq!(
                text(format, rec),
                "[2026-11-24T21:31:02.123Z] \"GET /a?b=\"c\" HTTP/1.1\" 200 - 0 12 8 7 \
                 \"10.0.0.9\" \"curl/8.0\" \"abc-123\" \"example.com\" \"127.0.0.1:9000\"\n"
            );
        });
    }

    #[test]
    fn req_fallback_truncation_and_missing_values() {
        with_record(|rec| {
            let format = vec![
                req("x-missing", Some("user-agent"), Some(4)),
                lit("|"),
                req("x-missing", None, None),
                lit("|"),
                req(":path", None, Some(2)),
                lit("|"),
                req("host", None, None),
                lit("|"),
                req("bad header name", None, None),
                lit("|"),
                resp("x-missing"),
                lit("|"),
                Command(C::Trailer {
                    main: "grpc-status".into(),
                    alt: None,
                    max_len: None,
                }),
                lit("|"),
                Command(C::ResponseDuration),
                lit("|"),
                Command(C::RouteName),
                lit("|"),
                Command(C::DownstreamRemoteAddressWithoutPort),
                lit("|"),
                Command(C::DownstreamRemoteAddress),
            ];
            assert_eq!(
                text(format, rec),
                "curl|-|/a|example.com|-|-|-|-|-|::1|[::1]:5000"
            );
            assert_eq!(text(vec![Command(C::Hostname)], rec), hostname());
        });
    }

    #[test]
    fn json_keeps_types_and_escapes() {
        let fmt = |pieces| JsonValueTemplate::Format(pieces);
        let format = LogFormat::Json(vec![
            ("code".into(), fmt(vec![Command(C::ResponseCode)])),
            ("duration".into(), fmt(vec![Command(C::Duration)])),
            ("path".into(), fmt(vec![req(":path", None, None)])),
            ("missing".into(), fmt(vec![Command(C::ResponseDuration)])),
            ("flags".into(), fmt(vec![Command(C::ResponseFlags)])),
            (
                "mixed".into(),
                fmt(vec![lit("code="), Command(C::ResponseCode)]),
            ),
            (
                "literal".into(),
                JsonValueTemplate::Literal(serde_json::json!(true)),
            ),
            (
                "nested".into(),
                JsonValueTemplate::Object(vec![(
                    "upstream".into(),
                    fmt(vec![Command(C::UpstreamHost)]),
                )]),
            ),
        ]);
        with_record(|rec| {
            let mut out = Vec::new();
            render(&format, rec, &mut out);
            assert_eq!(out.pop(), Some(b'\n'));
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let expected = serde_json::json!({
                "code": 200, "duration": 8, "path": "/a?b=\"c\"", "missing": null,
                "flags": "-", "mixed": "code=200", "literal": true,
                "nested": {"upstream": "127.0.0.1:9000"},
            });
            assert_eq!(value, expected);
        });
    }

    fn time(t: SystemTime, format: &str) -> String {
        let mut out = Vec::new();
        write_time(t, format, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn start_time_formats() {
        let t = start();
        assert_eq!(time(t, DEFAULT_TIME_FORMAT), "2026-11-24T21:31:02.123Z");
        assert_eq!(time(t, "%Y-%m-%dT%H:%M:%S%z"), "2026-11-24T21:31:02+0000");
        assert_eq!(time(t, "%s.%3f %6f %f"), "1795555862.123 123456 123456789");
        assert_eq!(
            time(t, "%F %T %E6S %e %y %Z %% %q é"),
            "2026-11-24 21:31:02 02.123456 24 26 UTC % %q é"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(
            time(leap, "%a %b %d %H:%M:%S %Y"),
            "Thu Feb 29 23:59:59 2024"
        );
        // Cross-check the calendar against httpdate over 1970..2100.
        for step in 0..2_000u64 {
            let t = UNIX_EPOCH + Duration::from_secs(step * 2_071_723);
            let expected = httpdate::fmt_http_date(t);
            assert_eq!(time(t, "%a, %d %b %Y %H:%M:%S GMT"), expected);
        }
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let sink = Sink {
            tx,
            dropped: AtomicU64::new(0),
        };
        sink.send(Msg::Reopen);
        sink.send(Msg::Reopen);
        assert_eq!(sink.dropped.load(Relaxed), 1);
    }

    #[test]
    fn file_sink_writes_and_reopens() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("strait-access-log-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let config = AccessLog {
            path: "access_log[0]".to_owned(),
            sink: AccessLogSink::File(path.clone()),
            format: LogFormat::Text(vec![req(":method", None, None), lit("\n")]),
        };
        let writers = Writers::new();
        let logger = AccessLogger::new(&config, &writers).unwrap();
        with_record(|rec| logger.log(rec));
        assert!(writers.flush_blocking(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "GET\n");

        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        writers.reopen();
        with_record(|rec| logger.log(rec));
        assert!(writers.flush_blocking(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "GET\n");
        assert_eq!(writers.dropped_lines(), 0);

        let missing = AccessLog {
            sink: AccessLogSink::File(dir.join("no/such/dir")),
            ..config
        };
        let error = AccessLogger::new(&missing, &writers).unwrap_err();
        assert!(error.to_string().contains("no/such/dir"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
