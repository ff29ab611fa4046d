//! The OpenAPI 3.1 document of the admin API, served at `GET /openapi.json`.
//!
//! Generated, not typed: the operations come from the route functions' `#[utoipa::path]`
//! attributes, registered with the router itself (`admin::api`), so a route cannot be served
//! and left out or documented and not served; the schemas come from the wire types
//! (`utoipa::ToSchema` on the very types the server writes and the CLI reads), so a field
//! cannot be documented one way and sent another. [`finish`] adds the two constraints that no
//! Rust type carries: a replay body is `all` or `records` (never both, never neither), and an
//! upload is binary and not empty.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document's frame: title, description, the bearer token that `/v1` needs.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "kasm admin API",
        description = "Health, metrics, handlers, hot swap, pause, dead letters. Everything under /v1 needs `Authorization: Bearer <KASM_ADMIN_TOKEN>`; without a configured token, /v1 reads are open and mutations answer 403."
    ),
    security(("bearer" = [])),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// The two tokens: the admin token, and a live-updates channel's (`GET /ws` only).
#[derive(Debug)]
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, api: &mut OpenApi) {
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", bearer("the admin token, KASM_ADMIN_TOKEN"));
        components.add_security_scheme(
            "channel",
            bearer(
                "GET /ws only: the channel's token, hex(HMAC-SHA256(KASM_WS_SECRET, channel)); also accepted as ?token=",
            ),
        );
    }
}

/// The document as served, encoded once when the server starts.
#[derive(Debug, Clone)]
pub(super) struct Document(pub(super) Arc<[u8]>);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses(
        (status = 200, description = "OpenAPI document", body = Object),
        super::ReadRefused,
    ))]
pub(super) async fn serve_document(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.to_vec())
}

/// Every `(method, path)` the document lists.
pub(super) fn operations(api: &OpenApi) -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for (path, item) in &api.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ] {
            if op.is_some() {
                all.push((method, path.clone()));
            }
        }
    }
    all
}

/// The generated document with what no type carries added, as JSON.
pub(super) fn finish(api: OpenApi) -> Value {
    let mut doc = match serde_json::to_value(&api) {
        Ok(doc) => doc,
        Err(e) => {
            // Not reachable for a document of plain strings and maps; an empty one says so.
            tracing::error!(error = %e, "the OpenAPI document did not encode");
            return json!({ "openapi": "3.1.0", "info": { "title": "kasm admin API", "version": env!("CARGO_PKG_VERSION") }, "paths": {} });
        }
    };
    // `all: true` with no records, or records with `all` false: the check `ReplayBody::request`
    // makes, which serde's field types cannot say.
    if let Some(replay) = doc.pointer_mut("/components/schemas/ReplayBody") {
        replay["oneOf"] = json!([
            { "required": ["all"], "properties": { "all": { "const": true }, "records": { "maxItems": 0 } } },
            { "required": ["records"], "properties": { "all": { "const": false }, "records": { "minItems": 1 } } }
        ]);
    }
    // The open routes (probes, metrics) need no credential at all: `security: []`, which
    // removes the document's bearer requirement (`security(())` is written `[{}]`, "optional").
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            if op.get("security") == Some(&json!([{}])) {
                op["security"] = json!([]);
            }
        }
    }
    // An upload is the component's bytes, at least one.
    if let Some(types) = doc
        .pointer_mut("/paths/~1v1~1handlers~1{name}~1component/put/requestBody/content")
        .and_then(Value::as_object_mut)
    {
        for media in types.values_mut() {
            media["schema"] = json!({ "type": "string", "format": "binary", "minLength": 1 });
        }
    }
    doc
}

/// The document, as [`crate::admin`] serves it.
pub fn document() -> Value {
    finish(super::api(|r| r).split_for_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_names_a_schema_the_wire_types_produced() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "Error",
            "HealthReport",
            "Handler",
            "SwapReport",
            "DeadLetterPage",
            "ReplayReport",
            "Produced",
        ] {
            assert!(schemas.contains_key(name), "{name}: {:?}", schemas.keys());
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 10, "{all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(schemas.contains_key(name), "{r} names no schema");
        }
        // The handler schema is the served type's: its fields, its status values.
        let handler = &schemas["Handler"];
        for field in [
            "name",
            "status",
            "active_version",
            "partitions",
            "counters",
            "max_replays",
        ] {
            assert!(
                handler["properties"].get(field).is_some(),
                "{field}: {handler}"
            );
        }
        if std::env::var_os("KASM_DUMP_OPENAPI").is_some() {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap());
        }
        let status = &schemas["HandlerStatus"];
        assert_eq!(status["enum"], json!(["running", "paused"]), "{status}");
    }
}
