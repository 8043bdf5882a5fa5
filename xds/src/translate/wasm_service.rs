//! `bootstrap_extensions`: only `envoy.bootstrap.wasm` (`WasmService`), a plugin run
//! beside the listeners. Its `config` is the `PluginConfig` the wasm filters take, so
//! it translates through [`super::wasm::filter`]; `singleton` picks one VM for the
//! process instead of one per worker.

use std::sync::Arc;

use serde_json::Value;

use super::{wasm, ConfigError, Result, TypedConfig};
use crate::bootstrap::{TypedExtensionConfig, WasmService, NOT_SUPPORTED};
use crate::model::WasmServiceConfig;

const WASM_SERVICE_TYPE: &str = "envoy.extensions.wasm.v3.WasmService";

pub(super) fn services(extensions: &[TypedExtensionConfig]) -> Result<Vec<Arc<WasmServiceConfig>>> {
    extensions
        .iter()
        .enumerate()
        .map(|(i, extension)| service(&format!("bootstrap_extensions[{i}]"), extension))
        .collect()
}

fn service(path: &str, extension: &TypedExtensionConfig) -> Result<Arc<WasmServiceConfig>> {
    let Some(value) = &extension.typed_config else {
        let message = match extension.name.as_str() {
            "envoy.bootstrap.wasm" => "typed_config is required".to_owned(),
            name => format!("{name} {NOT_SUPPORTED}"),
        };
        return Err(ConfigError::new(format!("{path}.typed_config"), message));
    };
    let typed = TypedConfig::parse(format!("{path}.typed_config"), value)?;
    if typed.type_name != WASM_SERVICE_TYPE {
        return Err(typed.unsupported());
    }
    // Validates every field (unknown ones are errors at their path) ...
    let service: WasmService = typed.decode()?;
    // ... and the plugin config is the filters' `Wasm { config }` without `singleton`.
    let mut fields = typed.fields.clone();
    if let Value::Object(map) = &mut fields {
        map.remove("singleton");
    }
    let plugin = wasm::filter(&TypedConfig { fields, ..typed })?;
    Ok(Arc::new(WasmServiceConfig {
        plugin: Arc::new(plugin),
        singleton: service.singleton,
    }))
}

#[cfg(test)]
mod tests {
    use crate::translate::snapshot_from_yaml;

    fn config(extension: &str) -> String {
        format!("bootstrap_extensions:\n{extension}")
    }

    const SERVICE: &str = r#"- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: ticker
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: "every 10ms"
      vm_config:
        vm_id: ticker-vm
        runtime: envoy.wasm.runtime.v8
        code: {local: {inline_string: "not really wasm"}}
"#;

    #[test]
    fn wasm_service_translates() {
        let snapshot = snapshot_from_yaml(&config(SERVICE)).unwrap();
        let [service] = &snapshot.wasm_services[..] else {
            panic!("one service expected");
        };
        assert!(service.singleton);
        assert_eq!(service.plugin.name, "ticker");
        assert_eq!(service.plugin.vm_id, "ticker-vm");
        assert_eq!(service.plugin.configuration, b"every 10ms");
        assert_eq!(service.plugin.path, "bootstrap_extensions[0].typed_config");
        let per_worker = SERVICE.replace("singleton: true", "singleton: false");
        let snapshot = snapshot_from_yaml(&config(&per_worker)).unwrap();
        assert!(!snapshot.wasm_services[0].singleton);
    }

    #[test]
    fn wasm_service_errors_name_paths() {
        let cases = [
            (
                "singleton: true",
                "singleton: true\n    stat_prefix: x",
                "bootstrap_extensions[0].typed_config.stat_prefix: unknown field",
            ),
            (
                "runtime: envoy.wasm.runtime.v8",
                "runtime: envoy.wasm.runtime.null",
                "bootstrap_extensions[0].typed_config.config.vm_config.runtime: the null runtime",
            ),
            (
                "envoy.extensions.wasm.v3.WasmService",
                "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                "bootstrap_extensions[0].typed_config: envoy.extensions.bootstrap.internal_listener.v3.InternalListener is not supported yet",
            ),
        ];
        for (from, to, want) in cases {
            assert!(SERVICE.contains(from), "{from}");
            let error = snapshot_from_yaml(&config(&SERVICE.replacen(from, to, 1)))
                .expect_err(to)
                .to_string();
            assert!(error.starts_with(want), "{to}: got {error}, want {want}");
        }
        let untyped = "- name: envoy.bootstrap.internal_listener\n";
        let error = snapshot_from_yaml(&config(untyped))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "bootstrap_extensions[0].typed_config: envoy.bootstrap.internal_listener is not supported yet"
        );
    }
}
