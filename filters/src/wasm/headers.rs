//! Header maps as plugins see them: pseudo-headers first (views onto the head's typed
//! fields, see the crate docs), then the regular headers in order, and the pairs
//! wire format of the proxy-wasm spec.
//!
//! As in Envoy, a request has no `host` header: HTTP/1.1's `Host` *is* `:authority`,
//! so reads, pairs and the header count leave it out, and writing either name (or
//! removing `:authority`) updates the URI's authority or the `Host` header behind it.
//!
//! ```text
//! u32 count, count × (u32 name_len, u32 value_len), then for each pair:
//! name bytes, NUL, value bytes, NUL            (all integers little-endian)
//! ```
use std::sync::OnceLock;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::abi::Status;
use super::state::StreamData;
use crate::{RequestHead, ResponseHead};

/// A header value read for a plugin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderBytes {
    Value(HeaderValue),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for HeaderBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            HeaderBytes::Value(value) => value.as_bytes(),
            HeaderBytes::Owned(bytes) => bytes,
        }
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for HeaderBytes {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.as_ref() == &other[..]
    }
}

/// A header name and value as the guest sent them.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// One of the maps `proxy_*_header_map_*` address, borrowed from the stream data.
pub(crate) enum HeaderView<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
    Trailers(&'a mut HeaderMap),
}

/// The map for an ABI `map_type`, or the status to return.
pub(crate) fn view(stream: &mut StreamData, map_type: i32) -> Result<HeaderView<'_>, Status> {
    stream.unpack_sent();
    let view = match map_type {
        0 => stream.request.as_deref_mut().map(HeaderView::Request),
        1 => stream.request_trailers.as_mut().map(HeaderView::Trailers),
        2 => stream.response.as_deref_mut().map(HeaderView::Response),
        3 => stream.response_trailers.as_mut().map(HeaderView::Trailers),
        4 => stream
            .grpc_initial_metadata
            .as_mut()
            .map(HeaderView::Trailers),
        5 => stream
            .grpc_trailing_metadata
            .as_mut()
            .map(HeaderView::Trailers),
        6 => stream.call_response.as_mut().map(HeaderView::Response),
        7 => stream.call_trailers.as_mut().map(HeaderView::Trailers),
        _ => return Err(Status::BadArgument),
    };
    view.ok_or(Status::NotFound)
}

impl HeaderView<'_> {
    fn headers(&self) -> &HeaderMap {
        match self {
            HeaderView::Request(head) => &head.headers,
            HeaderView::Response(head) => &head.headers,
            HeaderView::Trailers(map) => map,
        }
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        match self {
            HeaderView::Request(head) => &mut head.headers,
            HeaderView::Response(head) => &mut head.headers,
            HeaderView::Trailers(map) => map,
        }
    }

    /// Pseudo-headers in the order Envoy presents them.
    fn pseudo(&self) -> Vec<(&'static str, Vec<u8>)> {
        match self {
            HeaderView::Request(head) => {
                let mut pseudo = vec![
                    (":authority", authority(head).into_bytes()),
                    (":path", path(&head.uri).as_bytes().to_vec()),
                    (":method", head.method.as_str().as_bytes().to_vec()),
                    (
                        ":scheme",
                        head.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
                    ),
                ];
                pseudo.retain(|(_, value)| !value.is_empty());
                pseudo
            }
            HeaderView::Response(head) => {
                vec![(":status", head.status.as_str().as_bytes().to_vec())]
            }
            HeaderView::Trailers(_) => Vec::new(),
        }
    }

    /// The regular headers a plugin sees: all of them, but `host` on a request.
    fn regular(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let hide_host = matches!(self, HeaderView::Request(_));
        self.headers()
            .iter()
            .filter(move |(name, _)| !(hide_host && *name == HOST))
    }

    /// `host` on a request, which plugins read and write as `:authority`.
    fn is_request_host(&self, name: &[u8]) -> bool {
        matches!(self, HeaderView::Request(_)) && name.eq_ignore_ascii_case(b"host")
    }

    /// The number of pairs a plugin sees, counted without building them: this is
    /// the `num_headers` argument of every headers callback.
    pub fn len(&self) -> usize {
        match self {
            HeaderView::Request(head) => {
                // One lookup of `host`: it is not counted, and may be the authority.
                let mut hosts = head.headers.get_all(HOST).iter();
                let first = hosts.next();
                let host_count = usize::from(first.is_some()) + hosts.count();
                // `is_ascii` is `to_str().is_ok()` here (which `authority` uses): a
                // `HeaderValue` holds no control bytes but tab, so only bytes past
                // ASCII fail `to_str`; and it checks a word at a time, where
                // `to_str` went byte by byte (~70 instructions a request).
                let has_authority = match head.uri.authority() {
                    Some(authority) => !authority.as_str().is_empty(),
                    None => first.is_some_and(|h| !h.is_empty() && h.as_bytes().is_ascii()),
                };
                // :path, :method and :scheme are never empty.
                3 + usize::from(has_authority) + head.headers.len() - host_count
            }
            HeaderView::Response(head) => 1 + head.headers.len(),
            HeaderView::Trailers(map) => map.len(),
        }
    }

    /// All pairs, serialized.
    pub fn serialize(&self) -> Vec<u8> {
        let pseudo = self.pseudo();
        let pairs: Vec<(&[u8], &[u8])> = pseudo
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_slice()))
            .chain(
                self.regular()
                    .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
            )
            .collect();
        serialize_pairs(&pairs)
    }

    /// Envoy's `byteSize()` of the map: the lengths of every name and value, the
    /// pseudo-headers included (`request.total_size`, `response.total_size`).
    pub fn byte_size(&self) -> u64 {
        let pseudo: usize = self.pseudo().iter().map(|(n, v)| n.len() + v.len()).sum();
        let regular: usize = self
            .regular()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        (pseudo + regular) as u64
    }

    /// The first value of `name`.
    /// One value as a plugin reads it (the first, for a repeated header): a
    /// pseudo-header computed from the head, a regular header shared, not copied.
    pub fn get(&self, name: &str) -> Option<HeaderBytes> {
        if name.starts_with(':') {
            return self.pseudo_value(name).map(HeaderBytes::Owned);
        }
        if self.is_request_host(name.as_bytes()) {
            return None;
        }
        // `HeaderMap::get` lowercases a `&str` name itself.
        self.headers().get(name).cloned().map(HeaderBytes::Value)
    }

    /// The value of one pseudo-header (any case), as [`Self::pseudo`] has it.
    fn pseudo_value(&self, name: &str) -> Option<Vec<u8>> {
        let is = |pseudo: &str| name.eq_ignore_ascii_case(pseudo);
        let value = match self {
            HeaderView::Request(head) if is(":authority") => authority(head).into_bytes(),
            HeaderView::Request(head) if is(":path") => path(&head.uri).as_bytes().to_vec(),
            HeaderView::Request(head) if is(":method") => head.method.as_str().as_bytes().to_vec(),
            HeaderView::Request(head) if is(":scheme") => {
                head.uri.scheme_str().unwrap_or("http").as_bytes().to_vec()
            }
            HeaderView::Response(head) if is(":status") => head.status.as_str().as_bytes().to_vec(),
            _ => return None,
        };
        (!value.is_empty()).then_some(value)
    }

    /// Adds a value. `name` comes as the guest passed it: a regular header's name is
    /// validated by `HeaderName` (ASCII only), so only a pseudo-header's needs UTF-8.
    pub fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), Status> {
        if self.is_request_host(name) {
            return self.set_pseudo(":authority", value);
        }
        if name.starts_with(b":") {
            return self.set_pseudo(pseudo_name(name)?, value);
        }
        let (name, value) = parse(name, value)?;
        self.headers_mut().append(name, value);
        Ok(())
    }

    /// Replaces every value of `name` (see [`Self::add`] for `name`).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), Status> {
        if self.is_request_host(name) {
            return self.set_pseudo(":authority", value);
        }
        if name.starts_with(b":") {
            return self.set_pseudo(pseudo_name(name)?, value);
        }
        let (name, value) = parse(name, value)?;
        self.headers_mut().insert(name, value);
        Ok(())
    }

    /// Removing `:authority` (or `host`) takes the authority off the request;
    /// removing another pseudo-header is a no-op: a request always has a method and
    /// path, a response a status.
    pub fn remove(&mut self, name: &[u8]) -> Result<(), Status> {
        if let HeaderView::Request(head) = self {
            if name.eq_ignore_ascii_case(b":authority") || name.eq_ignore_ascii_case(b"host") {
                remove_authority(head);
                return Ok(());
            }
        }
        if name.starts_with(b":") {
            pseudo_name(name)?;
        } else {
            let name = HeaderName::from_bytes(name).map_err(|_| Status::BadArgument)?;
            self.headers_mut().remove(name);
        }
        Ok(())
    }

    /// Replaces every regular header with `pairs`; pseudo-headers in `pairs` update
    /// the head, absent ones keep their value (a request's `Host` included, being
    /// `:authority`).
    pub fn set_all(&mut self, pairs: &[Pair]) -> Result<(), Status> {
        let mut headers = HeaderMap::with_capacity(pairs.len());
        if let HeaderView::Request(head) = self {
            if let Some(host) = head.headers.get(HOST) {
                headers.insert(HOST, host.clone());
            }
        }
        let mut pseudo = Vec::new();
        for (name, value) in pairs {
            if name.starts_with(b":") || self.is_request_host(name) {
                pseudo.push((name, value));
            } else {
                let (name, value) = parse(name, value)?;
                headers.append(name, value);
            }
        }
        *self.headers_mut() = headers;
        // After the swap: in origin form `:authority` writes the `Host` header.
        for (name, value) in pseudo {
            self.replace(name, value)?;
        }
        Ok(())
    }

    fn set_pseudo(&mut self, name: &str, value: &[u8]) -> Result<(), Status> {
        match (self, name) {
            (HeaderView::Request(head), ":method") => {
                head.method = Method::from_bytes(value).map_err(|_| Status::BadArgument)?;
            }
            (HeaderView::Request(head), ":path") => {
                let path = PathAndQuery::try_from(value).map_err(|_| Status::BadArgument)?;
                let mut parts = head.uri.clone().into_parts();
                parts.path_and_query = Some(path);
                head.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
            }
            (HeaderView::Request(head), ":authority") => {
                let new = Authority::try_from(value).map_err(|_| Status::BadArgument)?;
                if head.uri.authority().is_some() {
                    let mut parts = head.uri.clone().into_parts();
                    parts.authority = Some(new);
                    head.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
                } else {
                    // Origin-form request (HTTP/1.1): the authority is the Host header.
                    let host =
                        HeaderValue::from_str(new.as_str()).map_err(|_| Status::BadArgument)?;
                    head.headers.insert(HOST, host);
                }
            }
            (HeaderView::Request(head), ":scheme") => {
                let scheme = Scheme::try_from(value).map_err(|_| Status::BadArgument)?;
                let authority = authority(head);
                let mut parts = head.uri.clone().into_parts();
                if parts.authority.is_none() {
                    // A scheme needs an authority in an http::Uri; take the Host's.
                    parts.authority = Some(
                        Authority::try_from(authority.as_str()).map_err(|_| Status::BadArgument)?,
                    );
                }
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                parts.scheme = Some(scheme);
                head.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
            }
            (HeaderView::Response(head), ":status") => {
                head.status = StatusCode::from_bytes(value).map_err(|_| Status::BadArgument)?;
            }
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }
}

/// `:authority`: the URI's authority (HTTP/2, absolute-form), else the Host header.
pub(crate) fn authority(head: &RequestHead) -> String {
    match head.uri.authority() {
        Some(authority) => authority.as_str().to_string(),
        None => head
            .headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Drops the authority: an absolute-form URI becomes origin-form (an `http::Uri`
/// cannot keep a scheme without an authority) and the `Host` header goes.
fn remove_authority(head: &mut RequestHead) {
    if head.uri.authority().is_some() {
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.uri = Uri::from(path);
    }
    head.headers.remove(HOST);
}

/// `:path`: path and query, `/` when the URI has none (e.g. `*` aside).
pub(crate) fn path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", PathAndQuery::as_str)
}

fn parse(name: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue), Status> {
    Ok((header_name(&NAMES, name)?, header_value(&VALUES, value)?))
}

/// A pseudo-header's name as text (a name that is not UTF-8 is a bad argument).
fn pseudo_name(name: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(name).map_err(|_| Status::BadArgument)
}

/// Names and values [`Interned`] keeps, each.
const INTERNED: usize = 16;
/// The longest name or value interned; longer ones are parsed every time.
const INTERNED_LEN: usize = 64;

/// The header names plugins set, as they passed them (lowercase, as the SDKs do).
static NAMES: Interned<HeaderName> = Interned::new();
/// The header values plugins set.
static VALUES: Interned<HeaderValue> = Interned::new();

/// The first few header names or values plugins set in this process, in memory that
/// lives as long as it (`&'static`, bounded by `INTERNED` × `INTERNED_LEN`). A
/// plugin sets the same few on every stream: found here, one costs a comparison of
/// bytes and a copy of two words. Parsed each time, it cost a validation pass, an
/// allocated copy, its free with the head, and for a name kept in an `Arc`-like
/// buffer an atomic count up and down (a static `Bytes` has no count). Slots fill
/// once and stay: a plugin that sets a new value on every stream (a request id, a
/// time) fills what is left and then parses as before.
struct Interned<T: 'static> {
    slots: [OnceLock<T>; INTERNED],
}

/// What [`Interned`] compares.
trait Text {
    fn text(&self) -> &[u8];
}

impl Text for HeaderName {
    fn text(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Text for HeaderValue {
    fn text(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<T: Clone + Text> Interned<T> {
    const fn new() -> Self {
        Self {
            slots: [const { OnceLock::new() }; INTERNED],
        }
    }

    /// The kept item whose bytes are `key`; else `make()` kept in a free slot (`None`
    /// once all are taken or when `make` declines).
    fn find_or_keep(&self, key: &[u8], make: impl FnOnce() -> Option<T>) -> Option<T> {
        let mut make = Some(make);
        for slot in &self.slots {
            let kept = match slot.get() {
                Some(kept) => kept,
                // Another thread may fill it first: then it holds that one's item.
                None => match make.take().and_then(|make| make()) {
                    Some(item) => slot.get_or_init(|| item),
                    None => return None,
                },
            };
            if kept.text() == key {
                return Some(kept.clone());
            }
        }
        None
    }
}

/// `name` as a `HeaderName`: the one `names` keeps when a plugin set it before.
fn header_name(names: &Interned<HeaderName>, name: &[u8]) -> Result<HeaderName, Status> {
    if let Some(kept) = names.find_or_keep(name, || None) {
        return Ok(kept);
    }
    let parsed = HeaderName::from_bytes(name).map_err(|_| Status::BadArgument)?;
    // Only a name passed in its canonical (lowercase) form can be found again.
    if parsed.as_str().as_bytes() == name && name.len() <= INTERNED_LEN {
        let keep = || Some(HeaderName::from_static(leak_token(name)?));
        if let Some(kept) = names.find_or_keep(name, keep) {
            return Ok(kept);
        }
    }
    Ok(parsed)
}

/// `value` as a `HeaderValue`: the one `values` keeps when a plugin set it before.
fn header_value(values: &Interned<HeaderValue>, value: &[u8]) -> Result<HeaderValue, Status> {
    if let Some(kept) = values.find_or_keep(value, || None) {
        return Ok(kept);
    }
    let parsed = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
    if value.len() <= INTERNED_LEN {
        let keep = || {
            let leaked: &'static [u8] = Box::leak(value.to_vec().into_boxed_slice());
            HeaderValue::from_maybe_shared(bytes::Bytes::from_static(leaked)).ok()
        };
        if let Some(kept) = values.find_or_keep(value, keep) {
            return Ok(kept);
        }
    }
    Ok(parsed)
}

/// `name` as text that lives as long as the process, if it is a lowercase token
/// (RFC 9110 `tchar`s): all `HeaderName::from_static` accepts without panicking.
fn leak_token(name: &[u8]) -> Option<&'static str> {
    let tchar =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(tchar) {
        return None;
    }
    let text = std::str::from_utf8(name).ok()?;
    Some(Box::leak(text.to_owned().into_boxed_str()))
}

pub(crate) fn serialize_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let body: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + body);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Parses the pairs format; any inconsistency is a `SerializationFailure`.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Result<Vec<Pair>, Status> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bad = Status::SerializationFailure;
    let word = |at: usize| -> Result<usize, Status> {
        let raw = bytes.get(at..at + 4).ok_or(bad)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes_at = 4;
    let mut data_at = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(bad)?;
    let mut pairs = Vec::with_capacity(count.min(bytes.len() / 8));
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
        sizes_at += 8;
        let name = bytes.get(data_at..data_at + name_len).ok_or(bad)?.to_vec();
        data_at += name_len + 1;
        let value = bytes.get(data_at..data_at + value_len).ok_or(bad)?.to_vec();
        data_at += value_len + 1;
        pairs.push((name, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_and_values_plugins_set_are_interned_and_bounded() {
        static NAMES: Interned<HeaderName> = Interned::new();
        static VALUES: Interned<HeaderValue> = Interned::new();
        let name = |n: &[u8]| header_name(&NAMES, n);
        let value = |v: &[u8]| header_value(&VALUES, v);
        let at = |n: &HeaderName| n.as_str().as_ptr();
        // Kept: the same bytes in memory each time, not a copy.
        let first = name(b"x-perf").unwrap();
        assert_eq!(at(&name(b"x-perf").unwrap()), at(&first));
        let wasm = value(b"wasm").unwrap();
        assert_eq!(
            value(b"wasm").unwrap().as_bytes().as_ptr(),
            wasm.as_bytes().as_ptr()
        );
        assert_eq!(wasm, "wasm");
        // Another case is the same name, parsed every time (it would never match).
        let upper = name(b"X-Perf").unwrap();
        assert_eq!(upper, first);
        assert_ne!(at(&upper), at(&first));
        assert_eq!(name(b"bad name"), Err(Status::BadArgument));
        assert_eq!(value(b"bad\nvalue"), Err(Status::BadArgument));
        // Too long to keep: parsed, right, every time.
        let long = vec![b'a'; INTERNED_LEN + 1];
        let (a, b) = (value(&long).unwrap(), value(&long).unwrap());
        assert_eq!(a.as_bytes(), &long[..]);
        assert_ne!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        // Bounded: once the slots are full, names are parsed, right, and not kept.
        for i in 0..INTERNED + 4 {
            let n = format!("x-n{i}");
            assert_eq!(name(n.as_bytes()).unwrap().as_str(), n);
        }
        assert!(NAMES.slots.iter().all(|slot| slot.get().is_some()));
        let late = format!("x-n{}", INTERNED + 3);
        let (a, b) = (
            name(late.as_bytes()).unwrap(),
            name(late.as_bytes()).unwrap(),
        );
        assert_eq!((a.as_str(), b.as_str()), (&late[..], &late[..]));
        assert_ne!(at(&a), at(&b));
        assert_eq!(at(&name(b"x-perf").unwrap()), at(&first));
        // A standard name is kept as `http`'s own (no bytes to compare but its text).
        assert_eq!(name(b"content-type").unwrap(), http::header::CONTENT_TYPE);
    }

    #[test]
    fn pairs_round_trip() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/a?b"), (b"x", b""), (b"k", b"v")];
        let wire = serialize_pairs(&pairs);
        let back = deserialize_pairs(&wire).unwrap();
        let back: Vec<(&[u8], &[u8])> = back.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(back, pairs);
    }

    #[test]
    fn truncated_pairs_are_an_error_not_a_panic() {
        let wire = serialize_pairs(&[(b"name", b"value")]);
        for cut in 1..wire.len() - 1 {
            assert!(deserialize_pairs(&wire[..cut]).is_err(), "cut at {cut}");
        }
        assert!(deserialize_pairs(&[255, 255, 255, 255]).is_err());
    }

    #[test]
    fn get_ignores_case_and_hides_host() {
        let (mut head, ()) = http::Request::get("/p?q")
            .header("host", "h")
            .header("x-Foo", "1")
            .body(())
            .unwrap()
            .into_parts();
        let view = HeaderView::Request(&mut head);
        let get = |name: &str| view.get(name).map(|v| v.as_ref().to_vec());
        assert_eq!(get("X-FOO"), Some(b"1".to_vec()));
        assert_eq!(get(":PATH"), Some(b"/p?q".to_vec()));
        assert_eq!(get(":authority"), Some(b"h".to_vec()));
        assert_eq!(get("host"), None);
        assert_eq!(get(":status"), None);
        assert_eq!(get("x-none"), None);
    }

    #[test]
    fn len_counts_the_pairs_plugins_see() {
        let heads = [
            http::Request::get("/a")
                .header("host", "h")
                .header("x", "1")
                .header("x", "2"),
            http::Request::get("http://auth/p").header("host", "other"),
            http::Request::post("/no-host").header("y", ""),
            http::Request::get("/bad-host").header("host", &b"\xff"[..]),
        ];
        for builder in heads {
            let (mut head, ()) = builder.body(()).unwrap().into_parts();
            let view = HeaderView::Request(&mut head);
            let pairs = view.pseudo().len() + view.regular().count();
            assert_eq!(view.len(), pairs, "{:?}", view.headers());
        }
        let (mut head, ()) = http::Response::builder()
            .header("a", "b")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(HeaderView::Response(&mut head).len(), 2);
    }

    #[test]
    fn request_pseudo_headers_map_to_the_head() {
        let (mut head, ()) = http::Request::get("/old?q=1")
            .header("host", "example.com")
            .body(())
            .unwrap()
            .into_parts();
        let mut view = HeaderView::Request(&mut head);
        assert_eq!(view.get(":path").unwrap(), b"/old?q=1");
        assert_eq!(view.get(":authority").unwrap(), b"example.com");
        assert_eq!(view.get(":method").unwrap(), b"GET");
        view.replace(b":path", b"/new").unwrap();
        view.replace(b":method", b"POST").unwrap();
        view.replace(b":authority", b"other.test").unwrap();
        // :authority, :path, :method, :scheme; `host` is :authority, not a header.
        assert_eq!(view.len(), 4);
        assert!(view.replace(b":path", b"no spaces allowed").is_err());
        assert_eq!(head.uri, "/new");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.headers["host"], "other.test");
    }

    /// Regression (differential test against Envoy): over HTTP/1.1 plugins saw a
    /// `host` header besides `:authority`, one more header than in Envoy.
    #[test]
    fn request_host_is_only_visible_as_authority() {
        let (mut head, ()) = http::Request::get("/")
            .header("host", "example.com")
            .header("x-a", "1")
            .body(())
            .unwrap()
            .into_parts();
        let mut view = HeaderView::Request(&mut head);
        assert_eq!(view.get("host"), None);
        assert_eq!(view.get(":authority").unwrap(), b"example.com");
        let pairs = deserialize_pairs(&view.serialize()).unwrap();
        let names: Vec<&[u8]> = pairs.iter().map(|(name, _)| &name[..]).collect();
        let expected: [&[u8]; 5] = [b":authority", b":path", b":method", b":scheme", b"x-a"];
        assert_eq!(names, expected);
        assert_eq!(view.len(), 5);

        // Replacing all pairs keeps the authority when absent, sets it when present.
        view.set_all(&[(b"x-b".to_vec(), b"2".to_vec())]).unwrap();
        assert_eq!(view.get(":authority").unwrap(), b"example.com");
        view.set_all(&[(b":authority".to_vec(), b"new.test".to_vec())])
            .unwrap();
        assert_eq!(view.get(":authority").unwrap(), b"new.test");
        view.replace(b"host", b"via-host.test").unwrap();
        assert_eq!(view.get(":authority").unwrap(), b"via-host.test");
        view.remove(b":authority").unwrap();
        assert_eq!(view.get(":authority"), None);
        assert!(head.headers.get("host").is_none());

        let (mut h2, ()) = http::Request::get("https://example.com/p?q")
            .body(())
            .unwrap()
            .into_parts();
        HeaderView::Request(&mut h2).remove(b":authority").unwrap();
        assert_eq!(h2.uri, "/p?q");
    }
}
