//! An example proxy-wasm HTTP filter for Strait (and Envoy):
//!
//! * adds one response header, named and valued by the plugin configuration;
//! * logs each request (`GET /path -> 200`) through the proxy's log;
//! * counts requests in the counter `example_requests_total`.
//!
//! The configuration is JSON, `{"header": "x-hello", "value": "from wasm"}`, or the
//! plain form `x-hello: from wasm`. A bad configuration makes `on_configure` return
//! false, so the proxy rejects the config rather than run a half-configured plugin.
use serde::Deserialize;

// The proxy-facing part (SDK entry point and contexts) only exists in the module: on
// the host (`cargo test`) there is no proxy to call, and the pure logic here is what
// the tests cover.
#[cfg(target_arch = "wasm32")]
mod plugin;

/// The response header the plugin adds: its pure logic, unit-tested on the host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResponseHeader {
    pub header: String,
    pub value: String,
}

impl ResponseHeader {
    /// Parses the JSON or the `name: value` form.
    pub fn parse(config: &[u8]) -> Result<ResponseHeader, String> {
        let text = std::str::from_utf8(config).map_err(|e| format!("not UTF-8: {e}"))?;
        let text = text.trim();
        let parsed = if text.starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?
        } else {
            let (header, value) = text
                .split_once(':')
                .ok_or_else(|| format!("expected JSON or `name: value`, got {text:?}"))?;
            ResponseHeader {
                header: header.trim().to_string(),
                value: value.trim().to_string(),
            }
        };
        let valid_name = !parsed.header.is_empty()
            && parsed
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        match valid_name {
            true => Ok(parsed),
            false => Err(format!("invalid header name {:?}", parsed.header)),
        }
    }
}

/// One line per request, as the plugin logs it.
pub fn log_line(method: &str, path: &str, status: &str) -> String {
    format!("{method} {path} -> {status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_plain_configuration() {
        let want = ResponseHeader {
            header: "x-hello".into(),
            value: "from wasm".into(),
        };
        let json = br#"{"header": "x-hello", "value": "from wasm"}"#;
        assert_eq!(ResponseHeader::parse(json), Ok(want.clone()));
        assert_eq!(ResponseHeader::parse(b" x-hello: from wasm\n"), Ok(want));
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(ResponseHeader::parse(b"").is_err());
        assert!(ResponseHeader::parse(b"no colon").is_err());
        assert!(ResponseHeader::parse(br#"{"header": "x"}"#).is_err());
        assert!(ResponseHeader::parse(b"bad name: v").is_err());
    }

    #[test]
    fn log_line_names_method_path_and_status() {
        assert_eq!(log_line("GET", "/a?b", "200"), "GET /a?b -> 200");
    }
}
