//! Admin `/config_dump` in Envoy's shape: the bootstrap, then its static clusters,
//! listeners and route configurations each in their own `*ConfigDump`, so tools
//! written for Envoy (`istioctl proxy-config`, dashboards, scripts) read Strait's.
//! `?resource=` lists one of those fields' items, `?name_regex=` keeps the
//! resources whose name matches, `?mask=` keeps only the named fields of each.
//!
//! The values are the config as written (Envoy prints them normalised: `0.25s`
//! where the YAML said `0.250s`, defaults left out).

use serde_json::{json, Map, Value};

const BOOTSTRAP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
const CLUSTERS: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const LISTENERS: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const SCOPED_ROUTES: &str = "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump";
const ROUTES: &str = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";
const SECRETS: &str = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump";
const HCM: &str = "envoy.filters.network.http_connection_manager";

/// One resource field of a dump: its dump type, the field, the item's type and the
/// key the resource sits under in an item.
struct Field {
    dump: &'static str,
    field: &'static str,
    item: &'static str,
    key: &'static str,
    resource: &'static str,
}

const FIELDS: &[Field] = &[
    Field {
        dump: CLUSTERS,
        field: "static_clusters",
        item: "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster",
        key: "cluster",
        resource: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    },
    Field {
        dump: LISTENERS,
        field: "static_listeners",
        item: "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener",
        key: "listener",
        resource: "type.googleapis.com/envoy.config.listener.v3.Listener",
    },
    Field {
        dump: ROUTES,
        field: "static_route_configs",
        item: "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.StaticRouteConfig",
        key: "route_config",
        resource: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    },
];

/// What `/config_dump`'s query asked for.
#[derive(Debug, Default)]
pub struct Query {
    pub resource: Option<String>,
    pub name_regex: Option<regex::Regex>,
    /// Field paths (`cluster.name`), each dotted.
    pub mask: Vec<String>,
}

/// The dump of `source` (the bootstrap as written), published at `last_updated`
/// (RFC 3339). `Err` is the answer to a query that names nothing in the dump.
pub fn render(source: &Value, last_updated: &str, query: &Query) -> Result<Value, String> {
    let items = |field: &Field| -> Vec<Value> {
        resources(source, field)
            .into_iter()
            .filter(|r| name_matches(r, query.name_regex.as_ref()))
            .map(|resource| {
                let mut typed = Map::new();
                typed.insert("@type".into(), Value::from(field.resource));
                if let Value::Object(fields) = resource {
                    typed.extend(fields.clone());
                }
                json!({field.key: Value::Object(typed), "last_updated": last_updated})
            })
            .collect()
    };
    if let Some(name) = &query.resource {
        let Some(field) = FIELDS.iter().find(|f| f.field == name) else {
            return Err(format!("{name} not found in config dump"));
        };
        let configs = items(field)
            .into_iter()
            .map(|item| {
                let mut item = masked(item, &query.mask);
                if let Value::Object(fields) = &mut item {
                    fields.insert("@type".into(), Value::from(field.item));
                }
                item
            })
            .collect::<Vec<_>>();
        return Ok(json!({ "configs": configs }));
    }
    let mut configs = vec![json!({
        "@type": BOOTSTRAP,
        "bootstrap": source,
        "last_updated": last_updated,
    })];
    for dump in [CLUSTERS, LISTENERS, SCOPED_ROUTES, ROUTES, SECRETS] {
        let mut config = Map::new();
        config.insert("@type".into(), Value::from(dump));
        for field in FIELDS.iter().filter(|f| f.dump == dump) {
            let list = items(field);
            if !list.is_empty() {
                config.insert(field.field.into(), Value::from(list));
            }
        }
        configs.push(Value::Object(config));
    }
    // A mask keeps its fields of each section; sections it leaves empty go.
    if !query.mask.is_empty() {
        configs = configs
            .into_iter()
            .map(|config| masked(config, &query.mask))
            .filter(|config| config.as_object().is_some_and(|c| c.len() > 1))
            .collect();
    }
    Ok(json!({ "configs": configs }))
}

/// The resources of `field` in the bootstrap: its clusters, its listeners, and the
/// route configurations written inside the listeners' connection managers.
fn resources<'a>(source: &'a Value, field: &Field) -> Vec<&'a Value> {
    let list = |v: &'a Value| v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let statics = &source["static_resources"];
    match field.key {
        "cluster" => list(&statics["clusters"]),
        "listener" => list(&statics["listeners"]),
        _ => list(&statics["listeners"])
            .into_iter()
            .flat_map(|l| list(&l["filter_chains"]))
            .flat_map(|chain| list(&chain["filters"]))
            .filter(|f| f["name"] == HCM)
            .filter_map(|f| f["typed_config"].get("route_config"))
            .collect(),
    }
}

fn name_matches(resource: &Value, re: Option<&regex::Regex>) -> bool {
    re.is_none_or(|re| resource["name"].as_str().is_some_and(|n| re.is_match(n)))
}

/// `value` with only the fields on the `mask` paths (all of it without one). The
/// `@type` of every object on a kept path stays, as Envoy keeps an `Any`'s type.
fn masked(value: Value, mask: &[String]) -> Value {
    if mask.is_empty() {
        return value;
    }
    let mut kept = Value::Object(Map::new());
    for path in mask {
        let parts: Vec<&str> = path.split('.').collect();
        keep(&value, &mut kept, &parts);
    }
    kept
}

/// Copies `from`'s field at `path` into `into`, with the `@type` of each object
/// on the way.
fn keep(from: &Value, into: &mut Value, path: &[&str]) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    let Some(next) = from.get(*key) else {
        return;
    };
    if let Some(t) = from.get("@type") {
        into["@type"] = t.clone();
    }
    if rest.is_empty() {
        into[*key] = next.clone();
        return;
    }
    if !into.get(*key).is_some_and(Value::is_object) {
        into[*key] = Value::Object(Map::new());
    }
    keep(next, &mut into[*key], rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Value {
        json!({"static_resources": {
            "clusters": [{"name": "a", "connect_timeout": "1s"}, {"name": "b"}],
            "listeners": [{"name": "main", "filter_chains": [{"filters": [{
                "name": HCM,
                "typed_config": {"route_config": {"name": "local", "virtual_hosts": []}},
            }]}]}],
        }})
    }

    #[test]
    fn the_dump_has_envoys_sections() {
        let dump = render(&source(), "T", &Query::default()).unwrap();
        let configs = dump["configs"].as_array().unwrap();
        let types: Vec<&str> = configs
            .iter()
            .map(|c| c["@type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                BOOTSTRAP,
                CLUSTERS,
                LISTENERS,
                SCOPED_ROUTES,
                ROUTES,
                SECRETS
            ]
        );
        assert_eq!(
            configs[1]["static_clusters"][0],
            json!({"cluster": {"@type": FIELDS[0].resource, "name": "a", "connect_timeout": "1s"}, "last_updated": "T"})
        );
        assert_eq!(
            configs[4]["static_route_configs"][0]["route_config"]["name"],
            "local"
        );
        let query = Query {
            mask: vec!["static_clusters".into()],
            ..Query::default()
        };
        let dump = render(&source(), "T", &query).unwrap();
        let configs = dump["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 1, "{dump}");
        assert_eq!(configs[0]["@type"], CLUSTERS);
    }

    #[test]
    fn resource_name_regex_and_mask() {
        let query = Query {
            resource: Some("static_clusters".into()),
            name_regex: Some(regex::Regex::new("^b$").unwrap()),
            mask: vec!["cluster.name".into()],
        };
        let dump = render(&source(), "T", &query).unwrap();
        assert_eq!(
            dump,
            json!({"configs": [{"@type": FIELDS[0].item, "cluster": {"@type": FIELDS[0].resource, "name": "b"}}]})
        );
        let query = Query {
            resource: Some("dynamic_clusters".into()),
            ..Query::default()
        };
        assert_eq!(
            render(&source(), "T", &query).unwrap_err(),
            "dynamic_clusters not found in config dump"
        );
    }
}
