//! Header mutations (`*_headers_to_add` / `*_headers_to_remove`) and header names and
//! values in route configs.

use http::{HeaderName, HeaderValue};

use super::{ConfigError, Result};
use crate::bootstrap::{self, NOT_SUPPORTED};
use crate::model::{AppendAction, HeaderMutations, HeaderValueOption};

pub(super) fn mutations(
    path: &str,
    request_add: &[bootstrap::HeaderValueOption],
    request_remove: &[String],
    response_add: &[bootstrap::HeaderValueOption],
    response_remove: &[String],
) -> Result<HeaderMutations> {
    let add = |field: &str, options: &[bootstrap::HeaderValueOption]| {
        options
            .iter()
            .enumerate()
            .map(|(i, option)| header_value_option(&format!("{path}.{field}[{i}]"), option))
            .collect::<Result<Vec<_>>>()
    };
    let remove = |field: &str, names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| mutable_header(&format!("{path}.{field}[{i}]"), name))
            .collect::<Result<Vec<_>>>()
    };
    Ok(HeaderMutations {
        request_headers_to_add: add("request_headers_to_add", request_add)?,
        request_headers_to_remove: remove("request_headers_to_remove", request_remove)?,
        response_headers_to_add: add("response_headers_to_add", response_add)?,
        response_headers_to_remove: remove("response_headers_to_remove", response_remove)?,
    })
}

fn header_value_option(
    path: &str,
    config: &bootstrap::HeaderValueOption,
) -> Result<HeaderValueOption> {
    let action = match (config.append, config.append_action) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                path,
                "only one of append, append_action may be set",
            ))
        }
        (Some(false), None) => AppendAction::OverwriteIfExistsOrAdd,
        (Some(true), None) | (None, None) => AppendAction::AppendIfExistsOrAdd,
        (None, Some(action)) => action,
    };
    Ok(HeaderValueOption {
        name: mutable_header(&format!("{path}.header.key"), &config.header.key)?,
        value: header_value(&format!("{path}.header.value"), &config.header.value)?,
        action,
        keep_empty_value: config.keep_empty_value.unwrap_or(false),
    })
}

/// A header that a mutation may touch: Envoy forbids pseudo-headers and `host`.
fn mutable_header(path: &str, name: &str) -> Result<HeaderName> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(ConfigError::new(
            path,
            format!("'{name}' may not be modified"),
        ));
    }
    header_name(path, name)
}

pub(super) fn header_name(path: &str, name: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(path, format!("invalid header name '{name}'")))
}

/// Envoy's header values are format strings; only literal text (`%%` for `%`) is
/// supported so far.
pub(super) fn header_value(path: &str, text: &str) -> Result<HeaderValue> {
    if text.replace("%%", "").contains('%') {
        let message = format!("format commands in header values {NOT_SUPPORTED}");
        return Err(ConfigError::new(path, message));
    }
    HeaderValue::from_str(&text.replace("%%", "%"))
        .map_err(|_| ConfigError::new(path, format!("invalid header value '{text}'")))
}
