//! Header processing every proxied request and response goes through: hop-by-hop
//! removal (RFC 9110 §7.6.1), `x-forwarded-*`, `x-request-id`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use strait_xds::model::InternalAddresses;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

pub use strait_filters::header_maps::{map_with_capacity, recycle};

/// A header of the connection, not the message (RFC 9110 §7.6.1): `connection`,
/// `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`.
pub(crate) fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// What Envoy's connection manager removes from a request before its filters and
/// its access log see it: `connection` with the headers it names, `keep-alive`,
/// `proxy-connection` and `transfer-encoding`, and `upgrade` unless the request
/// upgrades. The rest of the hop-by-hop set goes at the router
/// ([`remove_hop_by_hop`]).
pub fn remove_connection_headers(headers: &mut HeaderMap) {
    // One pass over the names (most requests carry none of these), as in
    // `remove_hop_by_hop`.
    if !headers.keys().any(is_connection_specific) {
        return;
    }
    if upgrade_type(headers).is_none() {
        // The names go with the header that names them: once it is gone, nothing
        // later can tell they were hop-by-hop.
        remove_named(headers, false);
        headers.remove(header::CONNECTION);
        if headers
            .remove(header::UPGRADE)
            .is_some_and(|v| is_h2c(v.as_bytes()))
        {
            headers.remove(&HTTP2_SETTINGS);
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// `keep_upgrade` leaves `Connection: upgrade` and `Upgrade` for a WebSocket hand-off.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry one or none (an upstream's `Connection: keep-alive`): one pass
    // over the names finds which are present, and only those are removed (each removal
    // hashes and probes).
    const CONN: u8 = 1;
    const TE: u8 = 1 << 1;
    const TRANSFER_ENCODING: u8 = 1 << 2;
    const UPGRADE: u8 = 1 << 3;
    const PROXY_AUTHENTICATE: u8 = 1 << 4;
    const PROXY_AUTHORIZATION: u8 = 1 << 5;
    const KEEP: u8 = 1 << 6;
    const PROXY_CONN: u8 = 1 << 7;
    let mut present = 0u8;
    for k in headers.keys() {
        present |= if k == header::CONNECTION {
            CONN
        } else if k == header::TE {
            TE
        } else if k == header::TRANSFER_ENCODING {
            TRANSFER_ENCODING
        } else if k == header::UPGRADE {
            UPGRADE
        } else if k == header::PROXY_AUTHENTICATE {
            PROXY_AUTHENTICATE
        } else if k == header::PROXY_AUTHORIZATION {
            PROXY_AUTHORIZATION
        } else if k == KEEP_ALIVE {
            KEEP
        } else if k == PROXY_CONNECTION {
            PROXY_CONN
        } else {
            0
        };
    }
    if present == 0 {
        return;
    }
    if present & CONN != 0 {
        remove_named(headers, keep_upgrade);
    }
    let remove = |headers: &mut HeaderMap, bit: u8, name: &HeaderName| {
        if present & bit != 0 {
            headers.remove(name);
        }
    };
    if !keep_upgrade {
        remove(headers, CONN, &header::CONNECTION);
        remove(headers, UPGRADE, &header::UPGRADE);
    }
    remove(headers, KEEP, &KEEP_ALIVE);
    remove(headers, PROXY_CONN, &PROXY_CONNECTION);
    remove(headers, TRANSFER_ENCODING, &header::TRANSFER_ENCODING);
    remove(headers, PROXY_AUTHENTICATE, &header::PROXY_AUTHENTICATE);
    remove(headers, PROXY_AUTHORIZATION, &header::PROXY_AUTHORIZATION);
    if present & TE != 0 {
        sanitize_te(headers);
    }
}

/// `trailers` is the one TE value that survives a hop (gRPC needs it over h2, where
/// it is the only value allowed): a TE that lists it among others (`gzip, trailers`)
/// goes on as `te: trailers` (lower case: an HTTP/2 upstream may take nothing else),
/// any other TE is removed, as Envoy's `sanitizeTEHeader`. Out of line: few requests
/// carry a TE, and its removals inlined into the router made the compiler outline
/// `HeaderMap::remove` for every other call there.
#[inline(never)]
fn sanitize_te(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::TE).iter();
    let only_trailers =
        values.next().is_some_and(|v| v.as_bytes() == b"trailers") && values.next().is_none();
    if only_trailers {
        return;
    }
    let trailers = headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    match trailers {
        true => headers.insert(header::TE, HeaderValue::from_static("trailers")),
        false => headers.remove(header::TE),
    };
}

/// Removes the headers the `Connection` header names (not itself); `keep_upgrade`
/// keeps `upgrade`.
fn remove_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    if !connection_tokens(headers).any(|t| !is_connection_option(t)) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !is_connection_option(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Connection tokens that are options, not header names.
fn is_connection_option(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"upgrade")
}

/// The tokens of every `Connection` value, trimmed, empty ones skipped. Bytes, not
/// `str`: nearly every message has one (`close`, or an upstream's `keep-alive`), and
/// the UTF-8 check and `char` splitting cost more than the comparisons.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the request asks to switch protocols, and to which (lower-case). Not for
/// `h2c`: Envoy does not upgrade a connection to HTTP/2 in place, and strips that
/// request's upgrade headers instead of refusing it ([`remove_connection_headers`]).
pub fn upgrade_type(headers: &HeaderMap) -> Option<String> {
    if !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return None;
    }
    let value = headers.get(header::UPGRADE)?;
    if is_h2c(value.as_bytes()) {
        return None;
    }
    Some(value.to_str().ok()?.trim().to_ascii_lowercase())
}

/// Whether an `Upgrade` value asks for `h2c`: not an upgrade in Strait, as in Envoy
/// (the HTTP/1.1 codec serves the request itself, and the router strips the upgrade's
/// headers).
pub fn is_h2c(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"h2c")
}

/// Maps with at most this many names are searched by a scan for a name outside
/// the standard set: comparing names costs less than hashing such a name's bytes
/// (~140 instructions a lookup; a standard name hashes as its index, and the map's
/// own lookup is the cheaper one). The forwarding headers are looked up on every
/// request, and are mostly absent.
const SCAN_MAX: usize = 12;

/// `headers.get(name)` for a non-standard `name`, by a scan when the map is small.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() > SCAN_MAX {
        return headers.get(name);
    }
    headers.iter().find_map(|(k, v)| (k == name).then_some(v))
}

/// `headers.contains_key(name)` for a non-standard `name`; see [`get`].
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    get(headers, name).is_some()
}

/// Settings of the connection manager that shape the forwarding headers.
pub struct ForwardingPolicy<'a> {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub generate_request_id: bool,
    /// `internal_address_config`; `None`: no request is internal (Envoy 1.40).
    pub internal_addresses: Option<&'a InternalAddresses>,
}

pub(crate) static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// The `x-envoy-*` request headers Envoy's connection manager removes from external
/// requests (`mutateRequestHeaders`), so only internal callers steer retries and
/// timeouts.
const EXTERNAL_STRIPPED: [&str; 10] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];

/// Also removed from edge requests (external, with `use_remote_address`).
const EDGE_STRIPPED: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// Removes the `x-envoy-*` headers an external request may not set.
fn strip_external(headers: &mut HeaderMap, edge: bool) {
    // Most requests carry none: one pass over the names beats a dozen hashed removals.
    if !headers.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        return;
    }
    headers.remove(&X_ENVOY_INTERNAL);
    for name in EXTERNAL_STRIPPED {
        headers.remove(name);
    }
    if edge {
        for name in EDGE_STRIPPED {
            headers.remove(name);
        }
    }
}

/// Applies `x-forwarded-for`, `x-forwarded-proto`, `x-request-id` and the
/// internal/external split as Envoy 1.40 does and returns the downstream address the
/// rest of the stream should believe.
///
/// A request is internal when, after XFF handling, `x-forwarded-for` holds a single
/// address (with `use_remote_address`: the request came without one) and that address
/// is in `internal_address_config`; without that config nothing is internal. Internal
/// requests get `x-envoy-internal: true` and keep their `x-envoy-*` steering headers;
/// external ones lose them. An edge request (external, `use_remote_address`) gets a
/// new `x-request-id` and `x-envoy-external-address`. A loopback peer is recorded in
/// XFF as this machine's own address (`local_ip`), as Envoy does.
pub fn apply_forwarding(
    headers: &mut HeaderMap,
    policy: &ForwardingPolicy,
    peer: IpAddr,
    local_ip: IpAddr,
    scheme: &'static str,
) -> IpAddr {
    let (effective, single_address) = if policy.use_remote_address {
        let single = !headers.contains_key(&X_FORWARDED_FOR);
        append_xff(headers, if peer.is_loopback() { local_ip } else { peer });
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        (Some(peer), single)
    } else {
        if !has(headers, &X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        xff_client(headers, policy.xff_num_trusted_hops)
            .map_or((None, false), |(ip, single)| (Some(ip), single))
    };
    let internal = single_address
        && effective.is_some_and(|ip| policy.internal_addresses.is_some_and(|c| c.contains(ip)));
    let edge = !internal && policy.use_remote_address;
    if internal {
        headers.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    } else {
        strip_external(headers, edge);
    }
    let effective = effective.unwrap_or(peer);
    if edge {
        if let Ok(v) = HeaderValue::from_str(&effective.to_string()) {
            headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
        }
    }
    if policy.generate_request_id && (edge || !has(headers, &X_REQUEST_ID)) {
        headers.insert(&X_REQUEST_ID, new_request_id());
    }
    effective
}

/// The address Envoy writes into `x-forwarded-for` for loopback peers: the first
/// non-loopback IPv4 address of an interface, else loopback.
pub fn local_address() -> IpAddr {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter()
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

fn append_xff(headers: &mut HeaderMap, peer: IpAddr) {
    let ip = peer.to_string();
    let joined = match get(headers, &X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The client address from `x-forwarded-for`, skipping `trusted_hops` entries from the
/// right (Envoy's `xff_num_trusted_hops`), and whether XFF held that one address only.
fn xff_client(headers: &HeaderMap, trusted_hops: u32) -> Option<(IpAddr, bool)> {
    let xff = get(headers, &X_FORWARDED_FOR)?.to_str().ok()?;
    let entry = xff.rsplit(',').nth(trusted_hops as usize)?;
    let ip = entry.trim().parse().ok()?;
    Some((ip, trusted_hops == 0 && !xff.contains(',')))
}

/// `n` as a header value. Below 256 (what `x-envoy-upstream-service-time` and the
/// attempt count almost always are) it is a clone of a value made once, pointing at
/// static bytes: no allocation, no shared count; `HeaderValue::from(u64)` allocates
/// (twice) for every value.
pub fn number(n: u64) -> HeaderValue {
    const SMALL: usize = 256;
    static VALUES: std::sync::LazyLock<Box<[HeaderValue]>> = std::sync::LazyLock::new(|| {
        // One string for all of them, made once for the process's life (~660 bytes).
        let text: String = (0..SMALL).map(|n| n.to_string()).collect();
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut at = 0;
        (0..SMALL)
            .map(|n| {
                let len = n.to_string().len();
                at += len;
                HeaderValue::from_static(&text[at - len..at])
            })
            .collect()
    });
    match usize::try_from(n) {
        Ok(i) if i < SMALL => VALUES[i].clone(),
        _ => HeaderValue::from(n),
    }
}

/// A random (version 4) UUID, as Envoy's request ids are.
fn new_request_id() -> HeaderValue {
    // 16 bytes of the worker's ChaCha stream. `rand::random::<[u8; 16]>()` samples
    // each byte from a `u32` of its own: 64 bytes of the stream per id, and a block
    // refill every fourth request (~250 instructions per request more).
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[pos] = b'-';
            pos += 1;
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out[pos] = HEX[(b >> 4) as usize];
        out[pos + 1] = HEX[(b & 0xf) as usize];
        pos += 2;
    }
    // SAFETY-free: every byte written above is ASCII hex or '-'.
    HeaderValue::from_bytes(&out).expect("uuid is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_themselves() {
        for n in [0, 1, 9, 10, 99, 100, 255, 256, 1000, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn scanned_lookups_agree_with_the_map_at_any_size() {
        let mut h = HeaderMap::new();
        for n in 0..20 {
            // Past SCAN_MAX names the map's own lookup answers; both must agree.
            for name in [&X_FORWARDED_FOR, &X_REQUEST_ID, &X_ENVOY_INTERNAL] {
                assert_eq!(get(&h, name), h.get(name), "{name} with {n} names");
                assert_eq!(has(&h, name), h.contains_key(name));
            }
            match n {
                3 => h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1")),
                5 => h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2")),
                _ => h.append(
                    HeaderName::from_bytes(format!("x-h{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                ),
            };
        }
        // The first value, as `HeaderMap::get`.
        assert_eq!(get(&h, &X_FORWARDED_FOR).unwrap(), "1.1.1.1");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        // Tokens across several values, padded, empty, in any case.
        let mut h = map(&[
            ("connection", " Close ,, X-Other "),
            ("connection", "x-third"),
            ("x-other", "1"),
            ("x-third", "1"),
            ("x-kept", "1"),
        ]);
        assert_eq!(upgrade_type(&h), None);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut grpc = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut grpc, false);
        assert!(grpc.contains_key("te"));
    }

    #[test]
    fn te_goes_on_as_trailers_alone_or_not_at_all() {
        for (sent, kept) in [
            (&[" gzip , Trailers"][..], Some("trailers")),
            (&["gzip", "trailers"][..], Some("trailers")),
            (&["trailers"][..], Some("trailers")),
            (&["TRAILERS"][..], Some("trailers")),
            (&["gzip, deflate;q=0.5"][..], None),
            (&["trailers;q=0.5"][..], None),
            (&[""][..], None),
        ] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(header::TE, HeaderValue::from_str(v).unwrap());
            }
            remove_hop_by_hop(&mut h, false);
            let got: Vec<_> = h.get_all(header::TE).iter().collect();
            match kept {
                Some(v) => assert_eq!(got, [v], "{sent:?}"),
                None => assert!(got.is_empty(), "{sent:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn an_h2c_upgrade_is_stripped_not_refused() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", " H2C "),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("x-kept", "1"),
        ]);
        assert_eq!(upgrade_type(&h), None);
        remove_connection_headers(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-kept"]);
        // Without `Connection: upgrade` as well: the settings go with the `h2c`.
        let mut h = map(&[("upgrade", "h2c"), ("http2-settings", "x"), ("x-b", "1")]);
        h.append("connection", HeaderValue::from_static("x-a"));
        remove_connection_headers(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-b"]);
    }

    #[test]
    fn upgrade_headers_survive_only_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(upgrade_type(&h).as_deref(), Some("websocket"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn request_ids_are_random_version_4_uuids() {
        let ids: Vec<String> = (0..64)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "ids repeat: {ids:?}");
    }

    #[test]
    fn forwarding_headers_follow_envoy() {
        let edge = ForwardingPolicy {
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            generate_request_id: true,
            internal_addresses: None,
        };
        let local: IpAddr = "192.0.2.2".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "abc")]);
        let ip = apply_forwarding(&mut h, &edge, "10.0.0.1".parse().unwrap(), local, "http");
        assert_eq!(ip.to_string(), "10.0.0.1");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-envoy-external-address"], "10.0.0.1");
        assert_ne!(h["x-request-id"], "abc", "an edge regenerates request ids");
        assert_eq!(h["x-request-id"].len(), 36);

        let mut lo = HeaderMap::new();
        apply_forwarding(&mut lo, &edge, "127.0.0.1".parse().unwrap(), local, "http");
        assert_eq!(
            lo["x-forwarded-for"], "192.0.2.2",
            "loopback peers are recorded as us"
        );

        let inner = ForwardingPolicy {
            use_remote_address: false,
            xff_num_trusted_hops: 1,
            generate_request_id: true,
            internal_addresses: None,
        };
        let mut h = map(&[
            ("x-forwarded-for", "9.9.9.9, 10.0.0.2"),
            ("x-request-id", "abc"),
        ]);
        let ip = apply_forwarding(&mut h, &inner, "127.0.0.1".parse().unwrap(), local, "http");
        assert_eq!(ip.to_string(), "9.9.9.9");
        assert_eq!(h["x-forwarded-for"], "9.9.9.9, 10.0.0.2");
        assert_eq!(h["x-request-id"], "abc", "a sidecar keeps the caller's id");
        let mut none = HeaderMap::new();
        apply_forwarding(
            &mut none,
            &inner,
            "127.0.0.1".parse().unwrap(),
            local,
            "http",
        );
        assert!(none.contains_key("x-request-id"));
    }

    /// Envoy 1.40: nothing is internal without `internal_address_config`; with it, a
    /// request whose single XFF address is in range keeps its steering headers.
    #[test]
    fn internal_requests_keep_envoy_headers() {
        let local: IpAddr = "192.0.2.2".parse().unwrap();
        let defaults = InternalAddresses {
            unix_sockets: false,
            cidr_ranges: Vec::new(),
        };
        let steering = || {
            map(&[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-timeout-ms", "100"),
                ("x-envoy-internal", "true"),
                ("x-request-id", "abc"),
            ])
        };
        let policy = |internal_addresses| ForwardingPolicy {
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            generate_request_id: true,
            internal_addresses,
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = steering();
        apply_forwarding(&mut h, &policy(None), lo, local, "http");
        assert!(!h.contains_key("x-envoy-retry-on"), "external by default");
        assert!(!h.contains_key("x-envoy-internal"));
        assert!(h.contains_key("x-envoy-external-address"));

        let mut h = steering();
        apply_forwarding(&mut h, &policy(Some(&defaults)), lo, local, "http");
        assert_eq!(h["x-envoy-retry-on"], "5xx");
        assert_eq!(h["x-envoy-upstream-rq-timeout-ms"], "100");
        assert_eq!(h["x-envoy-internal"], "true");
        assert_eq!(h["x-request-id"], "abc", "an internal request keeps its id");
        assert!(!h.contains_key("x-envoy-external-address"));

        let mut h = steering();
        h.insert("x-forwarded-for", "10.1.1.1".parse().unwrap());
        apply_forwarding(&mut h, &policy(Some(&defaults)), lo, local, "http");
        assert!(
            !h.contains_key("x-envoy-retry-on"),
            "XFF had an address already"
        );

        let tens = InternalAddresses {
            unix_sockets: false,
            cidr_ranges: vec![("10.0.0.0".parse().unwrap(), 8)],
        };
        let mut h = steering();
        apply_forwarding(&mut h, &policy(Some(&tens)), lo, local, "http");
        assert!(
            !h.contains_key("x-envoy-retry-on"),
            "127.0.0.1 is not in 10/8"
        );
        let mut h = steering();
        apply_forwarding(
            &mut h,
            &policy(Some(&tens)),
            "10.2.3.4".parse().unwrap(),
            local,
            "http",
        );
        assert_eq!(h["x-envoy-retry-on"], "5xx");

        let sidecar = ForwardingPolicy {
            use_remote_address: false,
            xff_num_trusted_hops: 0,
            generate_request_id: true,
            internal_addresses: Some(&defaults),
        };
        let mut h = steering();
        h.insert("x-forwarded-for", "192.168.1.1".parse().unwrap());
        apply_forwarding(&mut h, &sidecar, lo, local, "http");
        assert_eq!(h["x-envoy-retry-on"], "5xx", "one internal XFF address");
        let mut h = steering();
        apply_forwarding(&mut h, &sidecar, lo, local, "http");
        assert!(!h.contains_key("x-envoy-retry-on"), "no XFF: external");
    }

    #[test]
    fn default_internal_ranges_are_envoys() {
        let defaults = InternalAddresses {
            unix_sockets: false,
            cidr_ranges: Vec::new(),
        };
        for (ip, want) in [
            ("10.0.0.1", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.9.9", true),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("8.8.8.8", false),
            ("fd00::1", true),
            ("::1", true),
            ("fe80::1", false),
        ] {
            assert_eq!(defaults.contains(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
