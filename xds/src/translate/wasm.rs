//! `envoy.filters.http.wasm`: Envoy's `Wasm` filter config into a `WasmFilterConfig`.
//!
//! The module is read here; compiling it (which needs a wasm engine this crate does
//! not link) happens when the proxy builds its runtime, and its errors carry `path`.

use std::sync::Arc;

use serde_json::Value;

use std::time::Duration;

use super::{data_source, decode_base64, ConfigError, Result, TypedConfig};
use crate::bootstrap::{AsyncDataSource, RemoteDataSource, Wasm, NOT_SUPPORTED};
use crate::model::{RemoteCode, WasmFilterConfig};

const STRING_VALUE: &str = "google.protobuf.StringValue";
const BYTES_VALUE: &str = "google.protobuf.BytesValue";
const STRUCT: &str = "google.protobuf.Struct";

pub(super) fn filter(typed: &TypedConfig) -> Result<WasmFilterConfig> {
    let wasm: Wasm = typed.decode()?;
    let path = format!("{}.config", typed.fields_path);
    let config = wasm
        .config
        .ok_or_else(|| ConfigError::new(&path, "config is required"))?;
    let vm_path = format!("{path}.vm_config");
    let vm = config
        .vm_config
        .ok_or_else(|| ConfigError::new(&vm_path, "vm_config is required"))?;
    match vm.runtime.as_str() {
        // Every runtime Envoy offers for bytecode runs on wasmtime here.
        "envoy.wasm.runtime.v8"
        | "envoy.wasm.runtime.wasmtime"
        | "envoy.wasm.runtime.wamr"
        | "envoy.wasm.runtime.wavm" => {}
        "envoy.wasm.runtime.null" => {
            let message = "the null runtime (plugins compiled into Envoy) is not supported; \
                           use envoy.wasm.runtime.v8 with a .wasm module";
            return Err(ConfigError::new(format!("{vm_path}.runtime"), message));
        }
        "" => {
            return Err(ConfigError::new(
                format!("{vm_path}.runtime"),
                "runtime is required",
            ))
        }
        other => {
            let message = format!("unknown runtime '{other}'");
            return Err(ConfigError::new(format!("{vm_path}.runtime"), message));
        }
    }
    let (code, remote, code_source) = code(&format!("{vm_path}.code"), vm.code)?;
    let fail_open = match config.failure_policy.as_deref() {
        None | Some("UNSPECIFIED") => config.fail_open,
        Some("FAIL_OPEN") => true,
        // FAIL_RELOAD: the VM is restarted for the next stream anyway.
        Some("FAIL_CLOSED") | Some("FAIL_RELOAD") => false,
        Some(other) => {
            let message = format!("unknown failure_policy '{other}'");
            return Err(ConfigError::new(format!("{path}.failure_policy"), message));
        }
    };
    let environment = environment(&vm_path, &config.name, vm.environment_variables)?;
    Ok(WasmFilterConfig {
        path: typed.path.clone(),
        name: config.name,
        root_id: config.root_id,
        vm_id: vm.vm_id,
        configuration: any_bytes(&format!("{path}.configuration"), config.configuration)?,
        vm_configuration: any_bytes(&format!("{vm_path}.configuration"), vm.configuration)?,
        code: Arc::from(code),
        remote,
        code_source,
        fail_open,
        environment,
    })
}

/// `vm_config.environment_variables` as Envoy resolves it when it loads the config:
/// `key_values` as given, and each `host_env_keys` name with the proxy's value (left
/// out when the proxy has none). A name in both lists is an error, as in Envoy.
fn environment(
    vm_path: &str,
    plugin: &str,
    env: Option<crate::bootstrap::WasmEnvironment>,
) -> Result<Vec<(String, String)>> {
    let Some(env) = env else {
        return Ok(Vec::new());
    };
    let path = format!("{vm_path}.environment_variables");
    let mut out: Vec<(String, String)> = env.key_values.into_iter().collect();
    for (i, key) in env.host_env_keys.iter().enumerate() {
        if out.iter().any(|(k, _)| k == key) || env.host_env_keys[..i].contains(key) {
            let message = format!(
                "key '{key}' is duplicated in environment_variables for {plugin}: all the keys must be unique"
            );
            return Err(ConfigError::new(
                format!("{path}.host_env_keys[{i}]"),
                message,
            ));
        }
        if let Ok(value) = std::env::var(key) {
            out.push((key.clone(), value));
        }
    }
    Ok(out)
}

/// `vm_config.code` (at `path`): the module bytes of `local`, or where to fetch them
/// (`remote`, bytes empty), and a name for the source in messages.
fn code(
    path: &str,
    code: Option<AsyncDataSource>,
) -> Result<(Vec<u8>, Option<RemoteCode>, String)> {
    match code.map(|c| (c.local, c.remote)) {
        Some((Some(local), None)) => {
            let source = local
                .filename
                .clone()
                .unwrap_or_else(|| "inline".to_owned());
            Ok((data_source(&format!("{path}.local"), &local)?, None, source))
        }
        Some((None, Some(remote))) => {
            let remote = remote_code(&format!("{path}.remote"), remote)?;
            let source = remote.uri.clone();
            Ok((Vec::new(), Some(remote), source))
        }
        _ => Err(ConfigError::new(
            path,
            "exactly one of code.local, code.remote is required",
        )),
    }
}

/// Envoy's defaults for a `RemoteDataSource` fetch (`remote_async_datasource.cc`).
const REMOTE_RETRIES: u32 = 1;
const REMOTE_BASE_INTERVAL: Duration = Duration::from_secs(1);

fn remote_code(path: &str, remote: RemoteDataSource) -> Result<RemoteCode> {
    let uri_path = format!("{path}.http_uri");
    let http_uri = remote
        .http_uri
        .ok_or_else(|| ConfigError::new(&uri_path, "http_uri is required"))?;
    if http_uri.uri.is_empty() {
        return Err(ConfigError::new(
            format!("{uri_path}.uri"),
            "uri is required",
        ));
    }
    let parsed = http_uri
        .uri
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
        .and_then(|u| Some((u.authority()?.to_string(), u.path_and_query()?.to_string())));
    let Some((authority, path_and_query)) = parsed else {
        let message = format!(
            "'{}' is not an absolute http:// or https:// URI",
            http_uri.uri
        );
        return Err(ConfigError::new(format!("{uri_path}.uri"), message));
    };
    if http_uri.cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{uri_path}.cluster"),
            "cluster is required",
        ));
    }
    let timeout = http_uri
        .timeout
        .ok_or_else(|| ConfigError::new(format!("{uri_path}.timeout"), "timeout is required"))?;
    let sha256 = match remote.sha256.as_str() {
        "" => {
            return Err(ConfigError::new(
                format!("{path}.sha256"),
                "sha256 is required",
            ))
        }
        hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hex.to_ascii_lowercase()
        }
        other => {
            let message = format!("'{other}' is not a SHA-256 digest (64 hex digits)");
            return Err(ConfigError::new(format!("{path}.sha256"), message));
        }
    };
    let retry = remote.retry_policy.as_ref();
    let (base_interval, max_interval) = super::route::retry_back_off(
        &format!("{path}.retry_policy.retry_back_off"),
        retry.and_then(|r| r.retry_back_off.as_ref()),
        REMOTE_BASE_INTERVAL,
    )?;
    Ok(RemoteCode {
        path: path.to_owned(),
        uri: http_uri.uri,
        authority,
        path_and_query,
        cluster: http_uri.cluster,
        timeout,
        sha256,
        num_retries: retry.and_then(|r| r.num_retries).unwrap_or(REMOTE_RETRIES),
        base_interval,
        max_interval,
    })
}

/// A plugin configuration `Any` as the bytes the plugin reads: a `StringValue`'s
/// text, a `BytesValue`'s bytes, a `Struct` as JSON (as Envoy serializes it).
fn any_bytes(path: &str, value: Option<Value>) -> Result<Vec<u8>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let typed = TypedConfig::parse(path.to_owned(), &value)?;
    let mut fields = match typed.fields {
        Value::Object(fields) => fields,
        _ => return Err(ConfigError::new(path, "expected an object")),
    };
    match typed.type_name.as_str() {
        STRING_VALUE => match fields.remove("value") {
            None => Ok(Vec::new()),
            Some(Value::String(text)) => Ok(text.into_bytes()),
            Some(_) => Err(ConfigError::new(
                format!("{path}.value"),
                "expected a string",
            )),
        },
        BYTES_VALUE => match fields.remove("value") {
            None => Ok(Vec::new()),
            Some(Value::String(base64)) => decode_base64(&base64)
                .ok_or_else(|| ConfigError::new(format!("{path}.value"), "invalid base64")),
            Some(_) => Err(ConfigError::new(format!("{path}.value"), "expected base64")),
        },
        // Protobuf JSON writes a Struct inside an Any under `value`.
        STRUCT => {
            let object = fields.remove("value").unwrap_or(Value::Object(fields));
            Ok(serde_json::to_vec(&object).unwrap_or_default())
        }
        other => Err(ConfigError::new(
            path,
            format!("{other} {NOT_SUPPORTED} (use {STRING_VALUE}, {BYTES_VALUE} or {STRUCT})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::HttpFilterConfig;
    use crate::translate::snapshot_from_yaml;

    const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    /// A listener whose only HTTP filter before the router is `filter` (YAML at the
    /// indentation of an `http_filters` item's fields).
    fn config(filter: &str) -> String {
        let routes = r#"              - match: {prefix: "/"}
                direct_response: {status: 200}"#;
        let filter = format!("          - name: envoy.filters.http.wasm\n{filter}");
        crate::translate::test_yaml::with_http_filters(routes, &filter)
    }

    const TYPED_STRUCT: &str = r#"            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              value:
                config:
                  name: demo
                  root_id: root
                  failure_policy: FAIL_OPEN
                  configuration:
                    "@type": type.googleapis.com/google.protobuf.Struct
                    value: {greeting: hello}
                  vm_config:
                    vm_id: v
                    runtime: envoy.wasm.runtime.v8
                    configuration:
                      "@type": type.googleapis.com/google.protobuf.BytesValue
                      value: aGk=
                    code: {local: {inline_string: "not really wasm"}}"#;

    #[test]
    fn environment_takes_key_values_and_the_host_keys_it_has() {
        let env = "runtime: envoy.wasm.runtime.v8\n                    environment_variables:\n                      key_values: {MODE: strict}\n                      host_env_keys: [PATH, STRAIT_TEST_SURELY_UNSET]";
        let yaml = config(&TYPED_STRUCT.replacen("runtime: envoy.wasm.runtime.v8", env, 1));
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::Wasm(wasm)] = &snapshot.listeners[0].hcm.http_filters[..] else {
            panic!("one wasm filter");
        };
        let path = std::env::var("PATH").expect("tests run with a PATH");
        assert_eq!(
            wasm.environment,
            vec![
                ("MODE".to_owned(), "strict".to_owned()),
                ("PATH".to_owned(), path)
            ]
        );
    }

    #[test]
    fn typed_struct_wasm_filter_translates() {
        let snapshot = snapshot_from_yaml(&config(TYPED_STRUCT)).unwrap();
        let [HttpFilterConfig::Wasm(wasm)] = &snapshot.listeners[0].hcm.http_filters[..] else {
            panic!("one wasm filter expected");
        };
        assert_eq!(wasm.name, "demo");
        assert_eq!(wasm.root_id, "root");
        assert_eq!(wasm.vm_id, "v");
        assert!(wasm.fail_open);
        assert_eq!(wasm.configuration, br#"{"greeting":"hello"}"#);
        assert_eq!(wasm.vm_configuration, b"hi");
        assert_eq!(&wasm.code[..], b"not really wasm");
        assert_eq!(wasm.code_source, "inline");
        assert_eq!(wasm.path, format!("{HCM}.http_filters[0].typed_config"));
    }

    #[test]
    fn wasm_errors_name_paths() {
        let config_path = format!("{HCM}.http_filters[0].typed_config.value.config");
        let cases = [
            (
                "runtime: envoy.wasm.runtime.v8",
                "runtime: envoy.wasm.runtime.null",
                format!("{config_path}.vm_config.runtime: the null runtime"),
            ),
            (
                "code: {local: {inline_string: \"not really wasm\"}}",
                "code: {}",
                format!("{config_path}.vm_config.code: exactly one of code.local, code.remote"),
            ),
            (
                "code: {local: {inline_string: \"not really wasm\"}}",
                "code: {local: {filename: /nonexistent/plugin.wasm}}",
                format!("{config_path}.vm_config.code.local.filename: /nonexistent/plugin.wasm"),
            ),
            (
                "failure_policy: FAIL_OPEN",
                "failure_policy: SOMETIMES",
                format!("{config_path}.failure_policy: unknown failure_policy"),
            ),
            (
                "runtime: envoy.wasm.runtime.v8",
                "runtime: envoy.wasm.runtime.v8\n                    environment_variables: {key_values: {HOME: x}, host_env_keys: [HOME]}",
                format!("{config_path}.vm_config.environment_variables.host_env_keys[0]: key 'HOME' is duplicated"),
            ),
        ];
        for (from, to, want) in cases {
            assert!(TYPED_STRUCT.contains(from), "{from}");
            let error = snapshot_from_yaml(&config(&TYPED_STRUCT.replacen(from, to, 1)))
                .expect_err(to)
                .to_string();
            assert!(error.starts_with(&want), "{to}: got {error}, want {want}");
        }
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// `TYPED_STRUCT` with `code` replaced by `remote` (a flow mapping).
    fn remote_config(remote: &str) -> String {
        let local = "code: {local: {inline_string: \"not really wasm\"}}";
        config(&TYPED_STRUCT.replacen(local, &format!("code: {{remote: {remote}}}"), 1))
    }

    #[test]
    fn remote_code_translates_with_envoy_defaults() {
        let remote = format!(
            "{{http_uri: {{uri: \"https://plugins.example/v1/demo.wasm?x=1\", cluster: plugins, timeout: 2s}}, sha256: {}}}",
            SHA.to_uppercase()
        );
        let snapshot = snapshot_from_yaml(&remote_config(&remote)).unwrap();
        let [HttpFilterConfig::Wasm(wasm)] = &snapshot.listeners[0].hcm.http_filters[..] else {
            panic!("one wasm filter expected");
        };
        assert!(wasm.code.is_empty());
        assert_eq!(wasm.code_source, "https://plugins.example/v1/demo.wasm?x=1");
        let remote = wasm.remote.as_ref().expect("remote code");
        assert_eq!(
            remote.path,
            format!("{HCM}.http_filters[0].typed_config.value.config.vm_config.code.remote")
        );
        assert_eq!(remote.authority, "plugins.example");
        assert_eq!(remote.path_and_query, "/v1/demo.wasm?x=1");
        assert_eq!(remote.cluster, "plugins");
        assert_eq!(remote.timeout, Duration::from_secs(2));
        assert_eq!(remote.sha256, SHA, "normalized to lowercase");
        assert_eq!(remote.num_retries, 1);
        assert_eq!(remote.base_interval, Duration::from_secs(1));
        assert_eq!(remote.max_interval, Duration::from_secs(10));

        let with_retries = format!(
            "{{http_uri: {{uri: \"http://p/m.wasm\", cluster: plugins, timeout: 0s}}, sha256: {SHA}, retry_policy: {{num_retries: 4, retry_back_off: {{base_interval: 0.05s, max_interval: 0.2s}}}}}}"
        );
        let snapshot = snapshot_from_yaml(&remote_config(&with_retries)).unwrap();
        let HttpFilterConfig::Wasm(wasm) = &snapshot.listeners[0].hcm.http_filters[0] else {
            panic!("wasm filter expected");
        };
        let remote = wasm.remote.as_ref().unwrap();
        assert_eq!(remote.timeout, Duration::ZERO);
        assert_eq!(remote.num_retries, 4);
        assert_eq!(remote.base_interval, Duration::from_millis(50));
        assert_eq!(remote.max_interval, Duration::from_millis(200));
    }

    #[test]
    fn remote_code_errors_name_paths() {
        let remote =
            format!("{HCM}.http_filters[0].typed_config.value.config.vm_config.code.remote");
        let uri = "http_uri: {uri: \"http://p/m.wasm\", cluster: plugins, timeout: 1s}";
        let cases = [
            (format!("{{sha256: {SHA}}}"), format!("{remote}.http_uri: http_uri is required")),
            (format!("{{{uri}}}"), format!("{remote}.sha256: sha256 is required")),
            (
                format!("{{{uri}, sha256: abc}}"),
                format!("{remote}.sha256: 'abc' is not a SHA-256 digest"),
            ),
            (
                format!("{{http_uri: {{cluster: plugins, timeout: 1s}}, sha256: {SHA}}}"),
                format!("{remote}.http_uri.uri: uri is required"),
            ),
            (
                format!("{{http_uri: {{uri: /m.wasm, cluster: plugins, timeout: 1s}}, sha256: {SHA}}}"),
                format!("{remote}.http_uri.uri: '/m.wasm' is not an absolute http:// or https:// URI"),
            ),
            (
                format!("{{http_uri: {{uri: \"http://p/m\", timeout: 1s}}, sha256: {SHA}}}"),
                format!("{remote}.http_uri.cluster: cluster is required"),
            ),
            (
                format!("{{http_uri: {{uri: \"http://p/m\", cluster: plugins}}, sha256: {SHA}}}"),
                format!("{remote}.http_uri.timeout: timeout is required"),
            ),
            (
                format!("{{{uri}, sha256: {SHA}, retry_policy: {{retry_back_off: {{max_interval: 1s}}}}}}"),
                format!("{remote}.retry_policy.retry_back_off.base_interval: base_interval is required"),
            ),
            (
                format!("{{{uri}, sha256: {SHA}, retry_policy: {{retry_back_off: {{base_interval: 2s, max_interval: 1s}}}}}}"),
                format!("{remote}.retry_policy.retry_back_off.max_interval: max_interval must be"),
            ),
            (
                format!("{{{uri}, sha256: {SHA}, retry_policy: {{retry_on: 5xx}}}}"),
                format!("{remote}.retry_policy.retry_on: retry_on is not supported yet"),
            ),
        ];
        for (value, want) in cases {
            let error = snapshot_from_yaml(&remote_config(&value))
                .expect_err(&value)
                .to_string();
            assert!(
                error.starts_with(&want),
                "{value}: got {error}, want {want}"
            );
        }
        let both = TYPED_STRUCT.replacen(
            "code: {local: {inline_string: \"not really wasm\"}}",
            &format!("code: {{local: {{inline_string: x}}, remote: {{{uri}, sha256: {SHA}}}}}"),
            1,
        );
        let error = snapshot_from_yaml(&config(&both)).unwrap_err().to_string();
        assert!(
            error.contains("vm_config.code: exactly one of code.local, code.remote"),
            "{error}"
        );
    }
}
