//! A request's consistent hash from its route's `hash_policy`, as Envoy computes it.
//!
//! Each policy that finds its input contributes `xxHash64(input)`; contributions are
//! combined as `rotl(hash, 1) ^ new` (so two equal policies do not cancel out), and a
//! `terminal` policy that leaves a hash in hand stops the walk. No policy producing a
//! hash means a random pick, as Envoy's RING_HASH and MAGLEV do.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderValue};
use strait_xds::model::{HashPolicy, HashPolicyKind};
use xxhash_rust::xxh64::{xxh64, Xxh64};

/// What the hash policies may read about a request.
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    pub path_and_query: &'a str,
    /// The downstream address after `x-forwarded-for` processing.
    pub source_ip: IpAddr,
    /// The connection's own addresses, which seed a generated cookie.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The stream's filter state (`filter_state` policies), when it has one.
    pub filter_state: Option<crate::chain::ChainId>,
}

/// The hash, and the `set-cookie` to add to the response when a cookie policy
/// generated one.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

impl RequestHash {
    /// Evaluates `policies` in order.
    pub fn compute(policies: &[HashPolicy], input: &HashInput) -> RequestHash {
        let mut out = RequestHash::default();
        for policy in policies {
            if let Some(new) = evaluate(&policy.kind, input, &mut out.set_cookie) {
                out.hash = Some(out.hash.map_or(0, |old| old.rotate_left(1)) ^ new);
            }
            if policy.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

fn evaluate(
    kind: &HashPolicyKind,
    input: &HashInput,
    set_cookie: &mut Option<HeaderValue>,
) -> Option<u64> {
    match kind {
        HashPolicyKind::Header(name) => {
            let mut values = input.headers.get_all(name).iter();
            let first = values.next()?;
            if values.next().is_none() {
                return Some(xxh64(first.as_bytes(), 0));
            }
            // Several values hash as their sorted concatenation, whatever their order.
            let mut all: Vec<&[u8]> = input
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            all.sort_unstable();
            let mut hasher = Xxh64::new(0);
            for value in all {
                hasher.update(value);
            }
            Some(hasher.digest())
        }
        HashPolicyKind::Cookie { name, ttl, path } => {
            if let Some(value) = cookie(input.headers, name) {
                return Some(xxh64(value, 0));
            }
            let ttl = ttl.as_ref()?;
            // Envoy's generated value: stable per connection, so concurrent requests
            // on one connection agree; the pick then follows its hash like any cookie.
            let mut addrs = Vec::with_capacity(96);
            let _ = write!(addrs, "{}{}", input.peer, input.local);
            let value = format!("{:016x}", xxh64(&addrs, 0));
            let mut text = format!("{name}=\"{value}\"");
            if !ttl.is_zero() {
                text.push_str(&format!("; Max-Age={}", ttl.as_secs()));
            }
            if !path.is_empty() {
                text.push_str(&format!("; Path={path}"));
            }
            text.push_str("; HttpOnly");
            *set_cookie = HeaderValue::from_str(&text).ok();
            Some(xxh64(value.as_bytes(), 0))
        }
        HashPolicyKind::SourceIp => {
            let mut buf = [0u8; 48];
            let mut cursor = &mut buf[..];
            // An IPv6 address is at most 45 bytes of text, so this fits.
            let _ = write!(cursor, "{}", input.source_ip);
            let len = 48 - cursor.len();
            Some(xxh64(&buf[..len], 0))
        }
        HashPolicyKind::FilterState(key) => input.filter_state?.filter_state_hash(key),
        HashPolicyKind::QueryParameter(name) => {
            let (_, query) = input.path_and_query.split_once('?')?;
            let query = query.split('#').next().unwrap_or_default();
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| xxh64(value.as_bytes(), 0))
            })
        }
    }
}

/// The value of cookie `name` in the request's `cookie` headers, quotes removed.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(header::COOKIE).iter().find_map(|line| {
        line.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if key != name.as_bytes() {
                return None;
            }
            Some(match value {
                [b'"', inner @ .., b'"'] => inner,
                value => value,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn input<'a>(headers: &'a HeaderMap, path_and_query: &'a str) -> HashInput<'a> {
        HashInput {
            headers,
            path_and_query,
            source_ip: [192, 0, 2, 7].into(),
            peer: ([127, 0, 0, 1], 40000).into(),
            local: ([127, 0, 0, 1], 10000).into(),
            filter_state: None,
        }
    }

    fn policy(kind: HashPolicyKind, terminal: bool) -> HashPolicy {
        HashPolicy { kind, terminal }
    }

    fn header(name: &'static str) -> HashPolicyKind {
        HashPolicyKind::Header(http::HeaderName::from_static(name))
    }

    #[test]
    fn each_policy_hashes_its_input() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=\"s1\""),
        );
        let cookie = |ttl| HashPolicyKind::Cookie {
            name: "session".into(),
            ttl,
            path: "/".into(),
        };
        let query = HashPolicyKind::QueryParameter("id".into());
        // (policy, request path, hash expected)
        let cases = [
            (header("x-user"), "/", Some(xxh64(b"alice", 0))),
            (header("x-absent"), "/", None),
            (cookie(None), "/", Some(xxh64(b"s1", 0))),
            (HashPolicyKind::SourceIp, "/", Some(xxh64(b"192.0.2.7", 0))),
            (query.clone(), "/p?a=1&id=42&id=43", Some(xxh64(b"42", 0))),
            (query.clone(), "/p?a=1", None),
            (query, "/p", None),
        ];
        for (kind, path, want) in cases {
            let got = RequestHash::compute(&[policy(kind.clone(), false)], &input(&headers, path));
            assert_eq!(got.hash, want, "{kind:?} {path}");
            assert!(got.set_cookie.is_none());
        }
    }

    #[test]
    fn policies_combine_and_terminal_stops() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("2"));
        let (a, b) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let both = [policy(header("x-a"), false), policy(header("x-b"), false)];
        let got = RequestHash::compute(&both, &input(&headers, "/"));
        assert_eq!(got.hash, Some(a.rotate_left(1) ^ b));
        // The same policy twice does not cancel out.
        let twice = [policy(header("x-a"), false), policy(header("x-a"), false)];
        assert_eq!(
            RequestHash::compute(&twice, &input(&headers, "/")).hash,
            Some(a.rotate_left(1) ^ a)
        );
        // A terminal policy that found nothing does not stop the walk.
        let terminal = [
            policy(header("x-absent"), true),
            policy(header("x-a"), true),
            policy(header("x-b"), false),
        ];
        assert_eq!(
            RequestHash::compute(&terminal, &input(&headers, "/")).hash,
            Some(a)
        );
        assert_eq!(RequestHash::compute(&[], &input(&headers, "/")).hash, None);
    }

    #[test]
    fn absent_cookie_with_ttl_is_generated_and_set() {
        let headers = HeaderMap::new();
        let kind = HashPolicyKind::Cookie {
            name: "sticky".into(),
            ttl: Some(Duration::from_secs(60)),
            path: "/app".into(),
        };
        let got = RequestHash::compute(&[policy(kind, false)], &input(&headers, "/"));
        let set_cookie = got.set_cookie.unwrap();
        let text = set_cookie.to_str().unwrap();
        let value = &text["sticky=\"".len()..][..16];
        assert_eq!(
            text,
            format!("sticky=\"{value}\"; Max-Age=60; Path=/app; HttpOnly")
        );
        // The next request, carrying the cookie, hashes the same.
        let mut next = HeaderMap::new();
        next.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("sticky=\"{value}\"")).unwrap(),
        );
        assert_eq!(cookie(&next, "sticky"), Some(value.as_bytes()));
        assert_eq!(got.hash, Some(xxh64(value.as_bytes(), 0)));
    }

    #[test]
    fn several_header_values_hash_in_any_order() {
        let mut one = HeaderMap::new();
        one.append("x-k", HeaderValue::from_static("b"));
        one.append("x-k", HeaderValue::from_static("a"));
        let mut two = HeaderMap::new();
        two.append("x-k", HeaderValue::from_static("a"));
        two.append("x-k", HeaderValue::from_static("b"));
        let policies = [policy(header("x-k"), false)];
        let h1 = RequestHash::compute(&policies, &input(&one, "/")).hash;
        assert_eq!(h1, RequestHash::compute(&policies, &input(&two, "/")).hash);
        assert_eq!(h1, Some(xxh64(b"ab", 0)));
    }
}
