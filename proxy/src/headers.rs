//! Header processing every proxied request and response goes through: hop-by-hop
//! removal (RFC 9110 §7.6.1), `x-forwarded-*`, `x-request-id`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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
        let names_others = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| !is_connection_option(t.trim()));
        if names_others {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter(|t| !is_connection_option(t.trim()))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| !(keep_upgrade && n == header::UPGRADE))
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
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
    // `te: trailers` is the one TE value that survives a hop (gRPC needs it over h2).
    if present & TE != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
}

/// Connection tokens that are options, not header names.
fn is_connection_option(token: &str) -> bool {
    token.eq_ignore_ascii_case("keep-alive")
        || token.eq_ignore_ascii_case("close")
        || token.eq_ignore_ascii_case("upgrade")
}

/// Whether the request asks to switch protocols, and to which (lower-case).
pub fn upgrade_type(headers: &HeaderMap) -> Option<String> {
    let conn = headers.get(header::CONNECTION)?.to_str().ok()?;
    if !conn
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    Some(
        headers
            .get(header::UPGRADE)?
            .to_str()
            .ok()?
            .to_ascii_lowercase(),
    )
}

/// Settings of the connection manager that shape the forwarding headers.
pub struct ForwardingPolicy {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub generate_request_id: bool,
}

/// Applies `x-forwarded-for`, `x-forwarded-proto` and `x-request-id` as Envoy 1.40
/// does and returns the downstream address the rest of the stream should believe.
///
/// With `use_remote_address`, a loopback peer is recorded as this machine's own
/// address (`local_ip`), as Envoy does, and every request counts as external: Envoy
/// treats no address as internal unless `internal_address_config` says so, so
/// `x-request-id` is regenerated and `x-envoy-external-address` set.
pub fn apply_forwarding(
    headers: &mut HeaderMap,
    policy: &ForwardingPolicy,
    peer: IpAddr,
    local_ip: IpAddr,
    scheme: &'static str,
) -> IpAddr {
    let effective = if policy.use_remote_address {
        append_xff(headers, if peer.is_loopback() { local_ip } else { peer });
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
            headers.insert(&X_ENVOY_EXTERNAL_ADDRESS, v);
        }
        peer
    } else {
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        xff_client(headers, policy.xff_num_trusted_hops).unwrap_or(peer)
    };
    if policy.generate_request_id
        && (policy.use_remote_address || !headers.contains_key(&X_REQUEST_ID))
    {
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
    let joined = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The client address from `x-forwarded-for`, skipping `trusted_hops` entries from the
/// right (Envoy's `xff_num_trusted_hops`).
fn xff_client(headers: &HeaderMap, trusted_hops: u32) -> Option<IpAddr> {
    let xff = headers.get(&X_FORWARDED_FOR)?.to_str().ok()?;
    let entry = xff.rsplit(',').nth(trusted_hops as usize)?;
    entry.trim().parse().ok()
}

/// A random (version 4) UUID, as Envoy's request ids are.
fn new_request_id() -> HeaderValue {
    let mut bytes: [u8; 16] = rand::random();
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
        let mut grpc = map(&[("te", "trailers")]);
        remove_hop_by_hop(&mut grpc, false);
        assert!(grpc.contains_key("te"));
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
    fn forwarding_headers_follow_envoy() {
        let edge = ForwardingPolicy {
            use_remote_address: true,
            xff_num_trusted_hops: 0,
            generate_request_id: true,
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
}
