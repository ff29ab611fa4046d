//! The OpenAPI 3.1 document of the admin API, served at `GET /openapi.json`.
//!
//! The schemas are derived from the wire types themselves (`utoipa::ToSchema` on the very
//! types the server writes and the CLI reads), so a field cannot be documented one way and
//! sent another. The operations — which status answers what, the request constraints that
//! no type carries (a replay body is `all` or `records`, never both) — are written here next
//! to the routes; a test checks that the paths and methods are exactly the ones the router
//! serves (`admin::routes`).

use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use crate::admin::deploy::SwapReport;
use crate::admin::{ErrorBody, HandlerView, Produced};
use crate::dlq::list::Page;
use crate::dlq::replay::ReplayReport;
use crate::telemetry::health::Report;

use crate::dlq::list::MAX_LIST_LIMIT;

/// The schemas of every answer, by name, with the types they use.
fn schemas() -> Value {
    fn add<T: utoipa::ToSchema>(name: &str, all: &mut Vec<(String, RefOr<Schema>)>) {
        all.push((name.to_owned(), T::schema()));
        T::schemas(all);
    }
    let mut all = Vec::new();
    add::<ErrorBody>("Error", &mut all);
    add::<Report>("HealthReport", &mut all);
    add::<HandlerView>("Handler", &mut all);
    add::<SwapReport>("SwapReport", &mut all);
    add::<Page>("DeadLetterPage", &mut all);
    add::<ReplayReport>("ReplayReport", &mut all);
    add::<Produced>("Produced", &mut all);
    let mut map = Map::new();
    for (name, schema) in all {
        match serde_json::to_value(&schema) {
            Ok(v) => {
                map.insert(name, v);
            }
            Err(e) => {
                tracing::error!(schema = %name, error = %e, "an OpenAPI schema did not serialize")
            }
        }
    }
    Value::Object(map)
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn op(summary: &str, auth: bool, ok: Value, errors: &[(&str, &str)]) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert("200".into(), ok);
    for (code, what) in errors {
        responses.insert((*code).into(), error_response(what));
    }
    if auth {
        responses.insert(
            "401".into(),
            error_response("missing or wrong bearer token"),
        );
    }
    let mut o = json!({ "summary": summary, "responses": responses });
    if !auth {
        o["security"] = json!([]);
    }
    o
}

fn name_param() -> Value {
    json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" }, "description": "handler name" }])
}

fn json_ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

/// The document.
pub fn document() -> Value {
    let handler_ok = json_ok("the handler", "Handler");
    let swap_ok = json_ok("the version change", "SwapReport");
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kasm admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Health, metrics, handlers, hot swap, pause. Everything under /v1 needs `Authorization: Bearer <KASM_ADMIN_TOKEN>`; without a configured token, /v1 reads are open and mutations answer 403."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/healthz": { "get": op("Liveness: the process and every consumer loop are alive", false, json_ok("live", "HealthReport"), &[("503", "not live (body: HealthReport)")]) },
            "/readyz": { "get": op("Readiness: assigned, broker reachable, no partition held, not shutting down", false, json_ok("ready", "HealthReport"), &[("503", "not ready (body: HealthReport)")]) },
            "/metrics": { "get": op("Prometheus metrics (OpenMetrics text)", false, json!({ "description": "metrics", "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } }), &[]) },
            "/openapi.json": { "get": op("This document", true, json!({ "description": "OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } }), &[]) },
            "/v1/handlers": { "get": op("Every handler", true, json!({ "description": "handlers", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Handler" } } } } }), &[]) },
            "/v1/handlers/{name}": { "parameters": name_param(), "get": op("One handler: version and history, partitions with committed offset and lag, counters", true, handler_ok.clone(), &[("404", "no such handler")]) },
            "/v1/handlers/{name}/component": { "parameters": name_param(), "put": {
                "summary": "Deploy a component version (hot swap): validated, compiled, persisted, swapped; in-flight records finish on the old version",
                "requestBody": { "required": true, "content": { "application/wasm": { "schema": { "type": "string", "format": "binary", "minLength": 1 } }, "application/octet-stream": { "schema": { "type": "string", "format": "binary", "minLength": 1 } } } },
                "responses": {
                    "200": swap_ok.clone(),
                    "400": error_response("empty body"),
                    "401": error_response("missing or wrong bearer token"),
                    "403": error_response("no admin token configured: mutations disabled"),
                    "404": error_response("no such handler"),
                    "413": error_response("component over the size limit"),
                    "422": error_response("component refused (not wasm, core module, another world, ungranted import...); the active version keeps serving")
                }
            } },
            "/v1/handlers/{name}/rollback": { "parameters": name_param(), "post": op("Return to the previous version", true, swap_ok, &[("403", "mutations disabled"), ("404", "no such handler"), ("409", "no previous version")]) },
            "/v1/handlers/{name}/pause": { "parameters": name_param(), "post": op("Stop fetching; offsets stay put", true, handler_ok.clone(), &[("403", "mutations disabled"), ("404", "no such handler")]) },
            "/v1/handlers/{name}/resume": { "parameters": name_param(), "post": op("Resume fetching", true, handler_ok, &[("403", "mutations disabled"), ("404", "no such handler")]) },
            "/v1/handlers/{name}/dlq": { "parameters": name_param(), "get": {
                "summary": "Dead letters of the handler, provenance headers decoded, paged",
                "parameters": [
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 50 } },
                    { "name": "from", "in": "query", "schema": { "type": "string", "pattern": "^([0-9]{1,9}:[0-9]{1,18}(,[0-9]{1,9}:[0-9]{1,18})*)?$" }, "description": "cursor from the previous page's `next` (`partition:offset,...`)" },
                    { "name": "topic", "in": "query", "schema": { "type": "string" }, "description": "source topic whose dead-letter topic to read (default: the handler's first)" }
                ],
                "responses": {
                    "200": json_ok("a page", "DeadLetterPage"),
                    "400": error_response("bad query: limit out of range or not a number, or bad cursor"),
                    "401": error_response("missing or wrong bearer token"),
                    "404": error_response("no such handler, or `topic` is not one of its source topics"),
                    "502": error_response("the dead-letter topic could not be read")
                }
            } },
            "/v1/topics/{topic}/events": {
                "parameters": [{ "name": "topic", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^(?!\\.\\.?$)[A-Za-z0-9._-]{1,249}$" }, "description": "a Kafka topic name" }],
                "post": {
                    "summary": "Publish one event (acks=all, idempotent); an event-id is generated when the event has none",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["event"], "additionalProperties": false, "properties": {
                        "event": {}, "key": { "type": ["string", "null"] },
                        "headers": { "type": "object", "additionalProperties": { "type": "string" } } } } } } },
                    "responses": {
                        "200": json_ok("acknowledged by the broker", "Produced"),
                        "400": error_response("bad topic name, or the body is not JSON"),
                        "401": error_response("missing or wrong bearer token"),
                        "403": error_response("mutations disabled"),
                        "413": error_response("body over the size limit"),
                        "415": error_response("no `Content-Type: application/json`"),
                        "422": error_response("JSON, but not this body: a field missing, of the wrong type or unknown"),
                        "502": error_response("the broker did not acknowledge the write")
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "the admin token, KASM_ADMIN_TOKEN" },
                "channel": { "type": "http", "scheme": "bearer", "description": "GET /ws only: the channel's token, hex(HMAC-SHA256(KASM_WS_SECRET, channel)); also accepted as ?token=" }
            },
            "schemas": schemas()
        }
    });
    doc["paths"]["/v1/handlers/{name}/dlq/replay"] =
        json!({ "parameters": name_param(), "post": replay_op() });
    doc["paths"]["/ws"] = json!({ "get": ws_op() });
    doc
}

/// `POST /v1/handlers/{name}/dlq/replay` (added apart, as `/ws`).
fn replay_op() -> Value {
    json!({
        "summary": "Re-publish dead letters to their source topic with `kasm-replay-count`; records past the handler's max_replays are refused",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": {
            "all": { "type": "boolean" },
            "records": { "type": "array", "items": { "type": "object", "required": ["partition", "offset"], "additionalProperties": false, "properties": { "partition": { "type": "integer", "format": "int32" }, "offset": { "type": "integer", "format": "int64" } } } },
            "topic": { "type": ["string", "null"] } },
            "oneOf": [
                { "required": ["all"], "properties": { "all": { "const": true }, "records": { "maxItems": 0 } } },
                { "required": ["records"], "properties": { "all": { "const": false }, "records": { "minItems": 1 } } }
            ] } } } },
        "responses": {
            "200": json_ok("what was replayed and what was refused, with reasons", "ReplayReport"),
            "400": error_response("neither `all` nor `records` (or both), or the body is not JSON"),
            "401": error_response("missing or wrong bearer token"),
            "403": error_response("mutations disabled"),
            "404": error_response("no such handler, or `topic` is not one of its source topics"),
            "413": error_response("body over the size limit"),
            "415": error_response("no `Content-Type: application/json`"),
            "422": error_response("JSON, but not this body: a field of the wrong type or unknown"),
            "502": error_response("the dead-letter topic could not be read")
        }
    })
}

/// `GET /ws` (added apart: one more path in the big `json!` passes the macro's recursion limit).
fn ws_op() -> Value {
    json!({
        "summary": "WebSocket of one channel: what handlers broadcast to it. Token: hex(HMAC-SHA256(KASM_WS_SECRET, channel)), as a bearer header or ?token=",
        "parameters": [
            { "name": "channel", "in": "query", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9:._-]{1,200}$" } },
            { "name": "token", "in": "query", "required": false, "schema": { "type": "string" }, "description": "the channel's token, when no Authorization header carries it" }
        ],
        "security": [{ "channel": [] }],
        "responses": {
            "101": { "description": "switching to the WebSocket protocol; text messages follow" },
            "400": error_response("not a channel name, or not a WebSocket handshake"),
            "401": error_response("missing or wrong token for the channel"),
            "426": error_response("the connection cannot be upgraded"),
            "503": error_response("live updates off (no KASM_WS_SECRET) or too many clients")
        }
    })
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
            println!(
                "{}",
                serde_json::to_string_pretty(&doc["components"]["schemas"]).unwrap()
            );
        }
        let status = &schemas["HandlerStatus"];
        assert_eq!(status["enum"], json!(["running", "paused"]), "{status}");
    }
}
