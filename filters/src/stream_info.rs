//! What the proxy knows about one HTTP stream besides its heads and bodies: when it
//! started, where it was routed, which upstream answered, how the response came about,
//! and the stream's filter state. Envoy's `StreamInfo`; plugins read it through
//! properties (`request.time`, `xds.route_name`, `upstream.address`,
//! `filter_state.<key>`, …), the router hashes on its filter state.
//!
//! The chain owns one per stream (when the listener has filters that read or write
//! it) and lends it to each filter callback.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::wasm::MetaValue;
use crate::RequestHead;

/// The route a request took, by name, as Envoy's properties report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteNames {
    pub route: String,
    pub virtual_host: String,
    /// The cluster the route sends to (for weighted clusters, the one picked).
    pub cluster: String,
    /// Their `metadata.filter_metadata`: a struct of namespaces, each a struct.
    pub route_metadata: Arc<MetaValue>,
    pub virtual_host_metadata: Arc<MetaValue>,
    pub cluster_metadata: Arc<MetaValue>,
}

/// Where in the listener's route table the router sent a stream: indices, so that
/// recording the route costs no allocation; names are made only when a plugin asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAt {
    pub virtual_host: u32,
    pub route: u32,
    pub cluster: ClusterAt,
}

/// Which cluster of the route the stream went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAt {
    /// The route's only cluster.
    Route,
    /// This entry of its weighted clusters.
    Weighted(u32),
    /// A name read from a request header (`cluster_header`).
    Named(Box<str>),
}

/// The listener's routes, as plugins see them: the names of the route a stream took,
/// and (for request callbacks, before the router has run) the route it would take
/// now, as Envoy routes before its filters and again after a filter edits headers.
pub trait RouteResolver: Send + Sync {
    /// The route for `head`; `random` picks among weighted clusters, as the router
    /// will with the same value.
    fn resolve(&self, head: &RequestHead, random: u64) -> Option<RouteNames>;
    fn names(&self, at: &RouteAt) -> Option<RouteNames>;
}

/// The upstream exchange that produced the response.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamInfo {
    pub address: std::net::SocketAddr,
    /// The proxy's end of the upstream connection, when known.
    pub local_address: Option<std::net::SocketAddr>,
    /// The host's endpoint `metadata` (`xds.upstream_host_metadata`); `None` when it
    /// has none.
    pub metadata: Option<Arc<MetaValue>>,
}

/// Listener facts a plugin reads as `xds.listener_direction` and
/// `xds.filter_chain_name`; one per listener, shared by its streams.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerInfo {
    /// `traffic_direction`: 0 unspecified, 1 inbound, 2 outbound.
    pub direction: i64,
    /// The filter chain's `name`; empty when it has none.
    pub filter_chain_name: String,
    /// The listener's `metadata.filter_metadata` (`xds.listener_metadata`).
    pub metadata: MetaValue,
}

/// One stream's facts. See the module documentation.
pub struct StreamInfo {
    pub start_time: SystemTime,
    /// The stream's random value: weighted cluster picks use it, so the cluster a
    /// plugin reads before routing is the one the router takes.
    pub random: u64,
    /// The request's HTTP version (`request.protocol`).
    pub version: Option<http::Version>,
    /// The downstream connection (`source.*`, `destination.*`, `connection.*`).
    pub connection: Option<crate::wasm::ConnectionInfo>,
    pub listener: Option<Arc<ListenerInfo>>,
    pub resolver: Option<Arc<dyn RouteResolver>>,
    /// Set once the router has chosen the route.
    pub route: Option<RouteAt>,
    pub upstream: Option<UpstreamInfo>,
    /// Upstream attempts made so far (`upstream.request_attempt_count`).
    pub attempts: u32,
    /// `response.code` as the response went out, for the phases after its headers
    /// (during them the plugin reads the head itself).
    pub response_code: Option<u16>,
    /// `response.code_details`, once the response is decided (the proxy's own
    /// details are static; a plugin's local reply names its own).
    pub response_details: Option<std::borrow::Cow<'static, str>>,
    /// `response.flags`: Envoy's response-flag bits (`UF` is 0x20, …).
    pub response_flags: u64,
    /// Body bytes received from the client and sent to it so far.
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// Time from the start to the request's last byte, once it arrived.
    pub request_duration: Option<Duration>,
    pub filter_state: FilterState,
    /// The request head as the router sent it and the response head as it went to
    /// the client (or the local reply's), kept for `on_log`, which sees the final
    /// heads as Envoy's access-log context does. One copy each per stream,
    /// whatever the number of plugins.
    pub sent_request: Option<SentHead>,
    pub sent_response: Option<SentHead>,
}

/// A head as it went out, kept for the plugins' `on_log`. Where the codec that sent
/// it hands it back (Strait's HTTP/1.1 codecs write from a borrow), it is the head
/// itself, moved: nothing is copied. Where the codec consumes it (hyper, `h2`), it is
/// packed first: its start line as typed values and its headers in one buffer, which
/// costs one allocation and a copy of the bytes, against a `HeaderMap` clone's two
/// allocations, per-entry work and per-value reference counts (about a third of the
/// instructions, measured with callgrind); a plugin that reads a packed head in
/// `on_log` gets it unpacked then.
///
/// Each variant is a pointer, so a `SentHead` moves (the filters lend it to each
/// plugin's `on_log` and take it back) as two words.
pub struct SentHead(Sent);

enum Sent {
    Request(Box<RequestHead>),
    Response(Box<crate::ResponseHead>),
    Packed(Box<Packed>),
}

struct Packed {
    line: SentLine,
    version: http::Version,
    /// `name length (u32 LE), value length (u32 LE), name, value` per header, in the
    /// map's order (a name's values together, as `HeaderMap` iterates them).
    headers: Vec<u8>,
}

enum SentLine {
    Request {
        method: http::Method,
        uri: http::Uri,
    },
    Response {
        status: http::StatusCode,
    },
}

impl SentHead {
    /// A copy of a request head the codec keeps (packed).
    pub fn request(head: &RequestHead) -> Self {
        Self::request_parts(&head.method, &head.uri, head.version, &head.headers)
    }

    /// As [`Self::request`], from a whole request (which does not lend its head).
    pub fn request_of<B>(req: &http::Request<B>) -> Self {
        Self::request_parts(req.method(), req.uri(), req.version(), req.headers())
    }

    /// The request head itself, handed back by the codec that sent it.
    pub fn request_moved(head: Box<RequestHead>) -> Self {
        SentHead(Sent::Request(head))
    }

    /// The response head itself, handed back by the codec that sent it.
    pub fn response_moved(head: Box<crate::ResponseHead>) -> Self {
        SentHead(Sent::Response(head))
    }

    fn request_parts(
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        headers: &http::HeaderMap,
    ) -> Self {
        SentHead(Sent::Packed(Box::new(Packed {
            line: SentLine::Request {
                method: method.clone(),
                uri: uri.clone(),
            },
            version,
            headers: pack(headers),
        })))
    }

    /// A copy of a response head the codec keeps (packed).
    pub fn response(head: &crate::ResponseHead) -> Self {
        SentHead(Sent::Packed(Box::new(Packed {
            line: SentLine::Response {
                status: head.status,
            },
            version: head.version,
            headers: pack(&head.headers),
        })))
    }

    /// The request head; `None` if this is a response's.
    pub fn into_request(self) -> Option<Box<RequestHead>> {
        let packed = match self.0 {
            Sent::Request(head) => return Some(head),
            Sent::Packed(packed) => *packed,
            Sent::Response(_) => return None,
        };
        let SentLine::Request { method, uri } = packed.line else {
            return None;
        };
        let (mut head, ()) = http::Request::new(()).into_parts();
        head.method = method;
        head.uri = uri;
        head.version = packed.version;
        head.headers = unpack(&packed.headers);
        Some(Box::new(head))
    }

    /// The response head; `None` if this is a request's.
    pub fn into_response(self) -> Option<Box<crate::ResponseHead>> {
        let packed = match self.0 {
            Sent::Response(head) => return Some(head),
            Sent::Packed(packed) => *packed,
            Sent::Request(_) => return None,
        };
        let SentLine::Response { status } = packed.line else {
            return None;
        };
        let (mut head, ()) = http::Response::new(()).into_parts();
        head.status = status;
        head.version = packed.version;
        head.headers = unpack(&packed.headers);
        Some(Box::new(head))
    }
}

impl SentHead {
    /// Gives the head's map back for the thread's next heads
    /// ([`crate::header_maps::recycle`]); a packed copy has none.
    fn recycle(self) {
        match self.0 {
            Sent::Request(mut head) => {
                crate::header_maps::recycle(std::mem::take(&mut head.headers))
            }
            Sent::Response(mut head) => {
                crate::header_maps::recycle(std::mem::take(&mut head.headers))
            }
            Sent::Packed(_) => {}
        }
    }
}

impl Drop for StreamInfo {
    /// The heads kept for `on_log` end with the stream: their maps serve the
    /// thread's next ones.
    fn drop(&mut self) {
        let heads = [self.sent_request.take(), self.sent_response.take()];
        heads.into_iter().flatten().for_each(SentHead::recycle);
    }
}

fn pack(headers: &http::HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + headers.len() * 48);
    for (name, value) in headers {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out
}

fn unpack(mut packed: &[u8]) -> http::HeaderMap {
    fn take<'a>(packed: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, rest) = packed.split_at(n);
        *packed = rest;
        head
    }
    fn length(packed: &mut &[u8]) -> usize {
        let bytes = take(packed, 4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
    }
    let mut map = http::HeaderMap::new();
    while !packed.is_empty() {
        let (name_len, value_len) = (length(&mut packed), length(&mut packed));
        let name = take(&mut packed, name_len);
        let value = take(&mut packed, value_len);
        // Packed from a valid map, so both parse.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl StreamInfo {
    pub fn new(start_time: SystemTime) -> Self {
        Self {
            start_time,
            random: 0,
            version: None,
            connection: None,
            listener: None,
            resolver: None,
            route: None,
            upstream: None,
            attempts: 0,
            response_code: None,
            response_details: None,
            response_flags: 0,
            request_body_bytes: 0,
            response_body_bytes: 0,
            request_duration: None,
            filter_state: FilterState::default(),
            sent_request: None,
            sent_response: None,
        }
    }

    /// How the response goes to the client, for the phases after its headers:
    /// `response.code`, and `details` unless a plugin's reply set its own.
    pub fn keep_status(&mut self, status: http::StatusCode, details: &'static str) {
        self.response_code = Some(status.as_u16());
        self.response_details.get_or_insert(details.into());
    }

    /// The route the stream took, or (before routing) would take with `head`.
    pub fn route_names(&self, head: Option<&RequestHead>) -> Option<RouteNames> {
        let resolver = self.resolver.as_ref()?;
        match &self.route {
            Some(at) => resolver.names(at),
            None => resolver.resolve(head?, self.random),
        }
    }
}

impl Default for StreamInfo {
    fn default() -> Self {
        Self::new(SystemTime::UNIX_EPOCH)
    }
}

/// One filter-state object: a string value, as `envoy.string` and
/// `envoy.hashable_string` objects (and a plugin's `set_property`) hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterStateObject {
    pub value: Bytes,
    /// Route `hash_policy.filter_state` hashes only objects that are hashable
    /// (`envoy.hashable_string`), as in Envoy.
    pub hashable: bool,
    pub read_only: bool,
}

/// A stream's filter state: objects by key, in the order they were set.
#[derive(Debug, Clone, Default)]
pub struct FilterState {
    objects: Vec<(Box<str>, FilterStateObject)>,
}

/// A write refused because the object there is read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly;

impl FilterState {
    pub fn get(&self, key: &str) -> Option<&FilterStateObject> {
        self.objects
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, object)| object)
    }

    /// Sets `key`, replacing a mutable object; a read-only one stays (Envoy refuses
    /// the write).
    pub fn set(&mut self, key: &str, object: FilterStateObject) -> Result<(), ReadOnly> {
        match self.objects.iter_mut().find(|(k, _)| &**k == key) {
            Some((_, old)) if old.read_only => Err(ReadOnly),
            Some((_, old)) => {
                *old = object;
                Ok(())
            }
            None => {
                self.objects.push((key.into(), object));
                Ok(())
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: &'static str, read_only: bool) -> FilterStateObject {
        FilterStateObject {
            value: Bytes::from_static(value.as_bytes()),
            hashable: false,
            read_only,
        }
    }

    #[test]
    fn read_only_objects_keep_their_value() {
        let mut state = FilterState::default();
        state.set("a", object("1", false)).unwrap();
        state.set("a", object("2", true)).unwrap();
        assert_eq!(state.set("a", object("3", false)), Err(ReadOnly));
        assert_eq!(state.get("a").unwrap().value, "2");
        assert!(state.get("b").is_none());
    }
}

#[cfg(test)]
mod sent_head_tests {
    use super::SentHead;

    #[test]
    fn a_packed_head_unpacks_to_the_same_head() {
        let req = http::Request::builder()
            .method("PATCH")
            .uri("http://example.com/a/b?c=d")
            .version(http::Version::HTTP_2)
            .header("host", "example.com")
            .header("x-multi", "one")
            .header("X-Custom-Name", "")
            .header("x-multi", "two")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let sent = SentHead::request_of(&req);
        let head = sent.into_request().expect("a request head");
        assert_eq!(head.method, http::Method::PATCH);
        assert_eq!(head.uri, "http://example.com/a/b?c=d");
        assert_eq!(head.version, http::Version::HTTP_2);
        let pairs: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let want: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(pairs, want, "same names, values and order");
        assert!(SentHead::request_of(&req).into_response().is_none());

        let mut resp = http::Response::new(()).into_parts().0;
        resp.status = http::StatusCode::IM_A_TEAPOT;
        resp.headers.append("set-cookie", "a=1".parse().unwrap());
        resp.headers.append("set-cookie", "b=2".parse().unwrap());
        let head = SentHead::response(&resp)
            .into_response()
            .expect("a response head");
        assert_eq!(head.status, 418);
        let cookies: Vec<_> = head.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }

    #[test]
    fn a_moved_head_comes_back_as_it_went() {
        let (mut req, ()) = http::Request::post("/up").body(()).unwrap().into_parts();
        req.headers.append("X-Case", "kept".parse().unwrap());
        let head = SentHead::request_moved(Box::new(req))
            .into_request()
            .expect("a request head");
        assert_eq!((head.method.as_str(), head.uri.path()), ("POST", "/up"));
        assert_eq!(head.headers["x-case"], "kept");
        let (resp, ()) = http::Response::new(()).into_parts();
        let moved = SentHead::response_moved(Box::new(resp));
        assert!(moved.into_request().is_none());
        let (resp, ()) = http::Response::new(()).into_parts();
        let head = SentHead::response_moved(Box::new(resp)).into_response();
        assert_eq!(head.expect("a response head").status, 200);
        assert_eq!(std::mem::size_of::<SentHead>(), 16, "moves as two words");
    }
}
