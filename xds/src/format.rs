//! Envoy's substitution format language (`%COMMAND(ARG):LEN%`), parsed once at
//! translation into [`FormatPiece`]s.

use crate::model::{FormatCommand, FormatPiece};

/// Envoy's default access-log line.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
    %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
    %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
    \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
    \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Parses a format string; `%%` is a literal `%`. Adjacent literal text is one piece.
pub fn parse_format(format: &str) -> Result<Vec<FormatPiece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        literal.push_str(&rest[..start]);
        rest = &rest[start + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let position = format.len() - rest.len() - 1;
        let (command, after) =
            parse_command(rest).map_err(|e| format!("{e} at position {position}"))?;
        if !literal.is_empty() {
            pieces.push(FormatPiece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(FormatPiece::Command(command));
        rest = after;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(FormatPiece::Literal(literal));
    }
    Ok(pieces)
}

/// Parses `NAME(ARG):LEN%`, the text after an opening `%`; returns the rest of the input.
fn parse_command(text: &str) -> Result<(FormatCommand, &str), String> {
    let malformed = || {
        "malformed command: expected %COMMAND%, %COMMAND(ARG)% or %COMMAND(ARG):LENGTH% (%% is a literal %)".to_owned()
    };
    let name_end = text
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (name, mut rest) = text.split_at(name_end);
    let mut arg = None;
    if let Some(after) = rest.strip_prefix('(') {
        let end = after.find(')').ok_or_else(malformed)?;
        arg = Some(&after[..end]);
        rest = &after[end + 1..];
    }
    let mut max_len = None;
    if let Some(after) = rest.strip_prefix(':') {
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        max_len = Some(after[..digits].parse::<usize>().map_err(|_| malformed())?);
        rest = &after[digits..];
    }
    match rest.strip_prefix('%') {
        Some(rest) if !name.is_empty() => Ok((command(name, arg, max_len)?, rest)),
        _ => Err(malformed()),
    }
}

fn command(name: &str, arg: Option<&str>, max_len: Option<usize>) -> Result<FormatCommand, String> {
    use FormatCommand::*;
    let simple = match name {
        "START_TIME" if max_len.is_none() => return Ok(StartTime(arg.map(str::to_owned))),
        "REQ" | "RESP" | "TRAILER" => {
            let arg = arg.ok_or_else(|| format!("%{name}% needs a header: %{name}(NAME)%"))?;
            let (main, alt) = match arg.split_once('?') {
                Some((main, alt)) => (main, Some(alt)),
                None => (arg, None),
            };
            if main.is_empty() || alt.is_some_and(|alt| alt.is_empty() || alt.contains('?')) {
                return Err(format!(
                    "%{name}({arg})%: expected HEADER or HEADER?ALTERNATIVE"
                ));
            }
            let main = main.to_ascii_lowercase();
            let alt = alt.map(str::to_ascii_lowercase);
            return Ok(match name {
                "REQ" => Req { main, alt, max_len },
                "RESP" => Resp { main, alt, max_len },
                _ => Trailer { main, alt, max_len },
            });
        }
        "PROTOCOL" => Protocol,
        "RESPONSE_CODE" => ResponseCode,
        "RESPONSE_CODE_DETAILS" => ResponseCodeDetails,
        "RESPONSE_FLAGS" => ResponseFlags,
        "BYTES_RECEIVED" => BytesReceived,
        "BYTES_SENT" => BytesSent,
        "DURATION" => Duration,
        "REQUEST_DURATION" => RequestDuration,
        "RESPONSE_DURATION" => ResponseDuration,
        "UPSTREAM_HOST" => UpstreamHost,
        "UPSTREAM_CLUSTER" => UpstreamCluster,
        "UPSTREAM_CLUSTER_RAW" => UpstreamClusterRaw,
        "UPSTREAM_LOCAL_ADDRESS" => UpstreamLocalAddress,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => UpstreamTransportFailureReason,
        "DOWNSTREAM_REMOTE_ADDRESS" => DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => DownstreamDirectRemoteAddress,
        "ROUTE_NAME" => RouteName,
        "HOSTNAME" => Hostname,
        "START_TIME" => return Err("%START_TIME% takes no length".to_owned()),
        _ => return Err(format!("unknown command %{name}%")),
    };
    match (arg, max_len) {
        (None, None) => Ok(simple),
        _ => Err(format!("%{name}% takes no argument or length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FormatCommand::*;
    use FormatPiece::{Command as C, Literal as L};

    fn req(main: &str, alt: Option<&str>, max_len: Option<usize>) -> FormatPiece {
        C(Req {
            main: main.into(),
            alt: alt.map(Into::into),
            max_len,
        })
    }

    #[test]
    fn parses() {
        let cases: Vec<(&str, Vec<FormatPiece>)> = vec![
            ("", vec![]),
            ("plain text", vec![L("plain text".into())]),
            ("100%% sure", vec![L("100% sure".into())]),
            ("%PROTOCOL%", vec![C(Protocol)]),
            (
                "a %BYTES_SENT%%%\n",
                vec![L("a ".into()), C(BytesSent), L("%\n".into())],
            ),
            ("%START_TIME%", vec![C(StartTime(None))]),
            (
                "[%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%]",
                vec![
                    L("[".into()),
                    C(StartTime(Some("%Y-%m-%dT%H:%M:%S.%3fZ".into()))),
                    L("]".into()),
                ],
            ),
            ("%REQ(:METHOD)%", vec![req(":method", None, None)]),
            (
                "%REQ(X-Envoy-Original-Path?:PATH):10%",
                vec![req("x-envoy-original-path", Some(":path"), Some(10))],
            ),
            (
                "%RESP(X)% %TRAILER(grpc-status)%",
                vec![
                    C(Resp {
                        main: "x".into(),
                        alt: None,
                        max_len: None,
                    }),
                    L(" ".into()),
                    C(Trailer {
                        main: "grpc-status".into(),
                        alt: None,
                        max_len: None,
                    }),
                ],
            ),
            (
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                vec![C(DownstreamRemoteAddressWithoutPort)],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_format(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn errors() {
        for (text, want) in [
            ("%FOO%", "unknown command %FOO% at position 0"),
            ("x %FOO(bar)%", "unknown command %FOO% at position 2"),
            ("100% sure", "malformed command"),
            ("%PROTOCOL", "malformed command"),
            ("%REQ(X%", "malformed command"),
            ("%REQ%", "%REQ% needs a header"),
            ("%REQ(?x)%", "expected HEADER or HEADER?ALTERNATIVE"),
            ("%REQ(a?b?c)%", "expected HEADER or HEADER?ALTERNATIVE"),
            ("%PROTOCOL(x)%", "%PROTOCOL% takes no argument or length"),
            ("%DURATION:3%", "%DURATION% takes no argument or length"),
            ("%START_TIME:3%", "%START_TIME% takes no length"),
        ] {
            let error = parse_format(text).unwrap_err();
            assert!(error.contains(want), "{text:?}: {error}");
        }
    }

    #[test]
    fn default_format_parses() {
        let pieces = parse_format(DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        assert_eq!(pieces.first(), Some(&L("[".into())));
        assert_eq!(pieces.last(), Some(&L("\"\n".into())));
        assert!(pieces.contains(&req("x-envoy-original-path", Some(":path"), None)));
        assert!(DEFAULT_ACCESS_LOG_FORMAT.contains("%DURATION% %RESP("));
    }
}
