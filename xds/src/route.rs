//! Pure routing decisions over the model, as Envoy makes them: virtual-host lookup, route
//! match, cluster pick, path rewrite, redirect location and header mutation. Matching
//! borrows the request and allocates only for uppercase hosts and repeated headers.

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use regex::Regex;

use crate::model::{
    AppendAction, ClusterSpecifier, HeaderMatchKind, HeaderMatcher, HeaderMutations,
    HeaderValueOption, PathMatch, QueryParameterMatcher, Redirect, Route, RouteConfig, RouteMatch,
    RouteTarget, StringMatchKind, StringMatcher, VirtualHost,
};

impl RouteConfig {
    /// Exact host (port included), then the longest `*suffix`, then the longest
    /// `prefix*`, then `*`. A wildcard never matches the empty string.
    pub fn find_virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        self.virtual_hosts.get(self.find_virtual_host_index(host)?)
    }

    /// [`Self::find_virtual_host`], as an index into `virtual_hosts`.
    pub fn find_virtual_host_index(&self, host: &str) -> Option<usize> {
        let host = match host.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(host.to_ascii_lowercase()),
            false => Cow::Borrowed(host),
        };
        let index = &self.index;
        let longer = |pattern: &String| host.len() > pattern.len();
        let found = index
            .exact
            .get(host.as_ref())
            .copied()
            .or_else(|| {
                index
                    .suffixes
                    .iter()
                    .find(|(s, _)| longer(s) && host.ends_with(s.as_str()))
                    .map(|e| e.1)
            })
            .or_else(|| {
                index
                    .prefixes
                    .iter()
                    .find(|(p, _)| longer(p) && host.starts_with(p.as_str()))
                    .map(|e| e.1)
            })
            .or(index.default)?;
        Some(found)
    }
}

impl VirtualHost {
    /// The first route, in config order, whose match accepts the request.
    pub fn find_route(&self, req: &crate::model::RequestView<'_>) -> Option<&Route> {
        self.routes.get(self.find_route_index(req)?)
    }

    /// [`Self::find_route`], as an index into `routes`. A CONNECT request matches
    /// none (`RequestView::connect`).
    pub fn find_route_index(&self, req: &crate::model::RequestView<'_>) -> Option<usize> {
        if req.connect {
            return None;
        }
        self.routes
            .iter()
            .position(|route| route.matcher.matches(req))
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &crate::model::RequestView<'_>) -> bool {
        let path_and_query = req.path_and_query;
        let path = path_of(path_and_query);
        let case_sensitive = self.case_sensitive;
        let path_matches = match &self.path {
            // Envoy matches prefixes against the whole `:path`, query included.
            PathMatch::Prefix(prefix) => starts_with(path_and_query, prefix, case_sensitive),
            PathMatch::Path(exact) => equals(path, exact, case_sensitive),
            PathMatch::Regex(regex) => regex.is_match(path),
            PathMatch::PathSeparatedPrefix(prefix) => {
                starts_with(path, prefix, case_sensitive)
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
        };
        path_matches
            && self
                .headers
                .iter()
                .all(|matcher| matcher.matches(req.headers))
            && (self.query_parameters.is_empty() || {
                let query = query_of(path_and_query);
                self.query_parameters
                    .iter()
                    .all(|matcher| matcher.matches(query))
            })
    }
}

impl HeaderMatcher {
    /// Repeated headers are matched as their values joined with ",". A missing header
    /// fails every matcher, inverted or not, except `present_match` (Envoy's rule).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return matches!(self.kind, HeaderMatchKind::Present(present) if present == self.invert);
        };
        let value = match values.next() {
            None => Cow::Borrowed(first.as_bytes()),
            Some(_) => Cow::Owned(
                headers
                    .get_all(&self.name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect::<Vec<_>>()
                    .join(&b","[..]),
            ),
        };
        let text = std::str::from_utf8(&value);
        let matched = match &self.kind {
            HeaderMatchKind::Present(present) => *present,
            HeaderMatchKind::String(matcher) => text.is_ok_and(|text| matcher.matches(text)),
            HeaderMatchKind::Range { start, end } => text
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .is_some_and(|n| (*start..*end).contains(&n)),
        };
        matched != self.invert
    }
}

impl QueryParameterMatcher {
    /// Matches the first value of the parameter (no percent-decoding).
    pub fn matches(&self, query: &str) -> bool {
        let value = query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == self.name).then_some(value)
        });
        match (value, &self.string_match) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(matcher)) => matcher.matches(value),
        }
    }
}

impl StringMatcher {
    /// `ignore_case` is ASCII-only and does not apply to regexes (as in Envoy).
    pub fn matches(&self, value: &str) -> bool {
        let case_sensitive = !self.ignore_case;
        match &self.kind {
            StringMatchKind::Exact(exact) => equals(value, exact, case_sensitive),
            StringMatchKind::Prefix(prefix) => starts_with(value, prefix, case_sensitive),
            StringMatchKind::Suffix(suffix) => {
                value.len().checked_sub(suffix.len()).is_some_and(|start| {
                    bytes_equal(
                        &value.as_bytes()[start..],
                        suffix.as_bytes(),
                        case_sensitive,
                    )
                })
            }
            StringMatchKind::Contains(needle) if case_sensitive => value.contains(needle.as_str()),
            StringMatchKind::Contains(needle) => {
                needle.is_empty()
                    || value
                        .as_bytes()
                        .windows(needle.len())
                        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            }
            StringMatchKind::Regex(regex) => regex.is_match(value),
        }
    }
}

impl ClusterSpecifier {
    /// The cluster for this request: weighted picks walk the list with
    /// `random % total_weight`; `cluster_header` reads the header (None if absent, empty or
    /// not UTF-8).
    pub fn pick<'a>(&'a self, headers: &'a HeaderMap, random: u64) -> Option<&'a str> {
        match self {
            ClusterSpecifier::Cluster(name) => Some(name),
            ClusterSpecifier::Weighted {
                clusters,
                total_weight,
            } => {
                let mut point = random.checked_rem(u64::from(*total_weight))?;
                let picked = clusters.iter().find(|cluster| {
                    let weight = u64::from(cluster.weight);
                    point < weight || {
                        point -= weight;
                        false
                    }
                });
                picked.map(|cluster| cluster.name.as_str())
            }
            ClusterSpecifier::Header(name) => std::str::from_utf8(headers.get(name)?.as_bytes())
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }
}

impl RouteTarget {
    /// The upstream `:path` after `prefix_rewrite` or `regex_rewrite`; None without either.
    pub fn rewrite_path(&self, matcher: &RouteMatch, path_and_query: &str) -> Option<String> {
        rewrite(
            matcher,
            self.prefix_rewrite.as_deref(),
            self.regex_rewrite.as_ref(),
            path_and_query,
        )
    }
}

impl Redirect {
    /// The `Location` of the redirect, as Envoy builds it. `scheme` and `host` are the
    /// request's; a port in `host` is dropped when `port` is set, or when the scheme
    /// changes and the port is the old scheme's default. `host` replaces the whole
    /// authority, port included.
    pub fn location(
        &self,
        matcher: &RouteMatch,
        scheme: &str,
        host: &str,
        path_and_query: &str,
    ) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = match &self.host {
            Some(host) => host.as_str(),
            None => request_host(host, scheme, new_scheme, self.port.is_some()),
        };
        let path_has_query = self.path.as_ref().is_some_and(|path| path.contains('?'));
        let path = match &self.path {
            Some(path) if path_has_query => Cow::Borrowed(path.as_str()),
            Some(path) => Cow::Owned(format!("{path}{}", query_suffix(path_and_query))),
            None => rewrite(
                matcher,
                self.prefix_rewrite.as_deref(),
                self.regex_rewrite.as_ref(),
                path_and_query,
            )
            .map_or(Cow::Borrowed(path_and_query), Cow::Owned),
        };
        let path = match self.strip_query && !path_has_query {
            true => &path[..path.len() - query_suffix(&path).len()],
            false => &path,
        };
        let slash = if path.starts_with('/') { "" } else { "/" };
        let port = self.port.map(|port| format!(":{port}")).unwrap_or_default();
        format!("{new_scheme}://{host}{port}{slash}{path}")
    }
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_headers_to_add.is_empty()
            && self.request_headers_to_remove.is_empty()
            && self.response_headers_to_add.is_empty()
            && self.response_headers_to_remove.is_empty()
    }

    /// Applies the request mutations. Inline, so that the usual case (a route, virtual
    /// host or config with none: three of each per request) is two length checks,
    /// not a call (~36 instructions and two code misses each).
    #[inline]
    pub fn apply_request(&self, headers: &mut HeaderMap) {
        let (remove, add) = (
            &self.request_headers_to_remove,
            &self.request_headers_to_add,
        );
        if !(remove.is_empty() && add.is_empty()) {
            apply(remove, add, headers);
        }
    }

    /// Applies the response mutations (inline, as [`Self::apply_request`]).
    #[inline]
    pub fn apply_response(&self, headers: &mut HeaderMap) {
        let (remove, add) = (
            &self.response_headers_to_remove,
            &self.response_headers_to_add,
        );
        if !(remove.is_empty() && add.is_empty()) {
            apply(remove, add, headers);
        }
    }
}

/// Removals first, then additions; an empty value is skipped unless `keep_empty_value`.
fn apply(remove: &[HeaderName], add: &[HeaderValueOption], headers: &mut HeaderMap) {
    for name in remove {
        headers.remove(name);
    }
    for option in add
        .iter()
        .filter(|o| o.keep_empty_value || !o.value.is_empty())
    {
        let (name, value) = (option.name.clone(), option.value.clone());
        match option.action {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
            AppendAction::AddIfAbsent => {
                headers.entry(name).or_insert(value);
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

fn rewrite(
    matcher: &RouteMatch,
    prefix_rewrite: Option<&str>,
    regex_rewrite: Option<&(Regex, String)>,
    path_and_query: &str,
) -> Option<String> {
    if let Some(replacement) = prefix_rewrite {
        let matched = match &matcher.path {
            PathMatch::Prefix(p) | PathMatch::Path(p) | PathMatch::PathSeparatedPrefix(p) => {
                p.len()
            }
            // The translator rejects prefix_rewrite on regex matches.
            PathMatch::Regex(_) => return None,
        };
        return Some(format!("{replacement}{}", path_and_query.get(matched..)?));
    }
    let (regex, substitution) = regex_rewrite?;
    let path = path_of(path_and_query);
    let rest = &path_and_query[path.len()..];
    Some(format!(
        "{}{rest}",
        regex.replace_all(path, substitution.as_str())
    ))
}

/// The request's host for a redirect, without its port when Envoy would drop it.
fn request_host<'a>(host: &'a str, scheme: &str, new_scheme: &str, new_port: bool) -> &'a str {
    let port_start = match host.starts_with('[') {
        true => host.rfind("]:").map(|i| i + 1),
        false => host.rfind(':'),
    };
    let Some(port_start) = port_start else {
        return host;
    };
    let port = &host[port_start..];
    let default_port = matches!((scheme, port), ("http", ":80") | ("https", ":443"));
    match new_port || (scheme != new_scheme && default_port) {
        true => &host[..port_start],
        false => host,
    }
}

/// The path without query or fragment.
fn path_of(path_and_query: &str) -> &str {
    path_and_query
        .find(['?', '#'])
        .map_or(path_and_query, |end| &path_and_query[..end])
}

/// `?query` (with any fragment) or "".
fn query_suffix(path_and_query: &str) -> &str {
    path_and_query
        .find('?')
        .map_or("", |start| &path_and_query[start..])
}

/// The query without `?` and fragment.
fn query_of(path_and_query: &str) -> &str {
    let after_path = &path_and_query[path_of(path_and_query).len()..];
    let query = after_path.strip_prefix('?').unwrap_or("");
    query.find('#').map_or(query, |end| &query[..end])
}

fn starts_with(text: &str, prefix: &str, case_sensitive: bool) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| bytes_equal(head, prefix.as_bytes(), case_sensitive))
}

fn equals(text: &str, other: &str, case_sensitive: bool) -> bool {
    bytes_equal(text.as_bytes(), other.as_bytes(), case_sensitive)
}

fn bytes_equal(a: &[u8], b: &[u8], case_sensitive: bool) -> bool {
    match case_sensitive {
        true => a == b,
        false => a.eq_ignore_ascii_case(b),
    }
}
