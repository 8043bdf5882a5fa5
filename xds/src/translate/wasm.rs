//! `envoy.filters.http.wasm`: Envoy's `Wasm` filter config into a `WasmFilterConfig`.
//!
//! The module is read here; compiling it (which needs a wasm engine this crate does
//! not link) happens when the proxy builds its runtime, and its errors carry `path`.

use std::sync::Arc;

use serde_json::Value;

use super::{data_source, decode_base64, ConfigError, Result, TypedConfig};
use crate::bootstrap::{Wasm, NOT_SUPPORTED};
use crate::model::WasmFilterConfig;

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
    let code_path = format!("{vm_path}.code");
    let local = vm
        .code
        .and_then(|code| code.local)
        .ok_or_else(|| ConfigError::new(&code_path, "code.local is required"))?;
    let code_source = local
        .filename
        .clone()
        .unwrap_or_else(|| "inline".to_owned());
    let code = data_source(&format!("{code_path}.local"), &local)?;
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
    Ok(WasmFilterConfig {
        path: typed.path.clone(),
        name: config.name,
        root_id: config.root_id,
        vm_id: vm.vm_id,
        configuration: any_bytes(&format!("{path}.configuration"), config.configuration)?,
        vm_configuration: any_bytes(&format!("{vm_path}.configuration"), vm.configuration)?,
        code: Arc::from(code),
        code_source,
        fail_open,
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
                "code: {remote: {http_uri: {uri: x}}}",
                format!("{config_path}.vm_config.code.remote: remote is not supported yet"),
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
        ];
        for (from, to, want) in cases {
            assert!(TYPED_STRUCT.contains(from), "{from}");
            let error = snapshot_from_yaml(&config(&TYPED_STRUCT.replacen(from, to, 1)))
                .expect_err(to)
                .to_string();
            assert!(error.starts_with(&want), "{to}: got {error}, want {want}");
        }
    }
}
