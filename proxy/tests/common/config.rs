//! Bootstrap YAML for tests: one listener `main` on `127.0.0.1:0` (HCM `stat_prefix:
//! ingress`), an admin on port 0, and the virtual hosts and clusters a test gives as
//! YAML list items written from column 0.

use std::fmt::Write as _;
use std::net::SocketAddr;

pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// `text` with every non-empty line indented by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    let mut out = String::new();
    for line in text.trim_matches('\n').lines() {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
    out
}

/// A STATIC cluster as a YAML list item; `endpoints` are (address, weight).
/// A proxy-wasm `PluginConfig` (the fields under a wasm filter's or bootstrap
/// service's `config:`), YAML from column 0, as Envoy examples write it: the module
/// file, a `StringValue` configuration, runtime v8 (Strait runs it on wasmtime).
pub fn wasm_plugin(
    name: &str,
    vm_id: &str,
    module: &std::path::Path,
    configuration: &str,
    fail_open: bool,
) -> String {
    format!(
        r#"name: {name}
root_id: ""
fail_open: {fail_open}
configuration:
  "@type": type.googleapis.com/google.protobuf.StringValue
  value: "{configuration}"
vm_config:
  vm_id: "{vm_id}"
  runtime: envoy.wasm.runtime.v8
  code:
    local:
      filename: {module}
"#,
        module = module.display()
    )
}

pub fn cluster_yaml(name: &str, endpoints: &[(SocketAddr, u32)], http2: bool) -> String {
    let mut out = format!(
        "- name: {name}\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n"
    );
    for (addr, weight) in endpoints {
        let _ = write!(
            out,
            "      - endpoint:\n          address:\n            socket_address: {{address: {}, port_value: {}}}\n        load_balancing_weight: {weight}\n",
            addr.ip(),
            addr.port()
        );
    }
    if http2 {
        out.push_str(
            "  typed_extension_protocol_options:\n    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n      \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n      explicit_http_config:\n        http2_protocol_options: {}\n",
        );
    }
    out
}

/// A STATIC HTTP/1.1 cluster with one endpoint and `fields` (cluster fields, YAML from
/// column 0, e.g. `alt_stat_name: x`) added.
pub fn cluster_with(name: &str, addr: SocketAddr, fields: &str) -> String {
    format!(
        "{}{}",
        cluster_yaml(name, &[(addr, 1)], false),
        indent(fields, 2)
    )
}

/// A bootstrap under construction.
#[derive(Clone, Default)]
pub struct Bootstrap {
    virtual_hosts: String,
    hcm_extra: String,
    router_extra: String,
    route_config_extra: String,
    clusters: Vec<String>,
    stat_prefix: Option<String>,
}

impl Bootstrap {
    /// `virtual_hosts`: YAML list items (`- name: …`) from column 0.
    pub fn new(virtual_hosts: &str) -> Bootstrap {
        Bootstrap {
            virtual_hosts: virtual_hosts.to_owned(),
            ..Default::default()
        }
    }

    /// One virtual host `default` for `*` sending `/` to `cluster`.
    pub fn catch_all(cluster: &str) -> Bootstrap {
        Bootstrap::new(&format!(
            "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /}}\n    route: {{cluster: {cluster}}}\n"
        ))
    }

    /// Extra HttpConnectionManager fields, YAML from column 0.
    pub fn hcm(mut self, yaml: &str) -> Bootstrap {
        self.hcm_extra.push_str(yaml.trim_matches('\n'));
        self.hcm_extra.push('\n');
        self
    }

    /// Fields of the router filter's typed config (e.g. `suppress_envoy_headers`),
    /// YAML from column 0.
    pub fn router(mut self, yaml: &str) -> Bootstrap {
        self.router_extra.push_str(yaml.trim_matches('\n'));
        self.router_extra.push('\n');
        self
    }

    /// Extra route_config fields (e.g. `request_headers_to_add`), YAML from column 0.
    pub fn route_config(mut self, yaml: &str) -> Bootstrap {
        self.route_config_extra.push_str(yaml.trim_matches('\n'));
        self.route_config_extra.push('\n');
        self
    }

    pub fn stat_prefix(mut self, prefix: &str) -> Bootstrap {
        self.stat_prefix = Some(prefix.to_owned());
        self
    }

    /// A STATIC HTTP/1.1 cluster with one endpoint.
    pub fn cluster(self, name: &str, addr: SocketAddr) -> Bootstrap {
        self.cluster_raw(&cluster_yaml(name, &[(addr, 1)], false))
    }

    /// A STATIC cluster with one endpoint spoken to over h2c.
    pub fn h2_cluster(self, name: &str, addr: SocketAddr) -> Bootstrap {
        self.cluster_raw(&cluster_yaml(name, &[(addr, 1)], true))
    }

    /// A cluster as a YAML list item (`- name: …`) from column 0.
    pub fn cluster_raw(mut self, yaml: &str) -> Bootstrap {
        self.clusters.push(yaml.trim_matches('\n').to_owned());
        self
    }

    pub fn build(&self) -> String {
        let clusters = if self.clusters.is_empty() {
            "  clusters: []\n".to_owned()
        } else {
            format!("  clusters:\n{}", indent(&self.clusters.join("\n"), 2))
        };
        format!(
            r#"admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address:
      socket_address: {{address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: {prefix}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{router}{hcm}          route_config:
            name: local
{rc}            virtual_hosts:
{vhosts}{clusters}"#,
            prefix = self.stat_prefix.as_deref().unwrap_or("ingress"),
            router = indent(&self.router_extra, 14),
            hcm = indent(&self.hcm_extra, 10),
            rc = indent(&self.route_config_extra, 12),
            vhosts = indent(&self.virtual_hosts, 12),
        )
    }
}
