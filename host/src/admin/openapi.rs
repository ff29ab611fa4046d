//! The OpenAPI 3.1 document of the admin API, served at `GET /openapi.json`.
//!
//! Written by hand next to the routes it describes; a test checks that its paths and
//! methods are exactly the ones the router serves (`admin::routes`).

use serde_json::{Value, json};

use crate::dlq::list::MAX_LIST_LIMIT;

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
                    "200": { "description": "a page", "content": { "application/json": { "schema": { "type": "object", "properties": {
                        "records": { "type": "array", "items": { "type": "object" } }, "next": { "type": ["string", "null"] } } } } } },
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
                        "200": { "description": "acknowledged by the broker", "content": { "application/json": { "schema": { "type": "object", "properties": {
                            "topic": { "type": "string" }, "partition": { "type": "integer" }, "offset": { "type": "integer" }, "event_id": { "type": "string" } } } } } },
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
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "HealthReport": { "type": "object", "properties": {
                    "status": { "type": "string", "enum": ["live", "unhealthy", "ready", "not-ready"] },
                    "shutting_down": { "type": "boolean" },
                    "handlers": { "type": "object", "additionalProperties": { "type": "object" } } } },
                "Handler": { "type": "object", "properties": {
                    "name": { "type": "string" }, "group_id": { "type": "string" },
                    "topics": { "type": "array", "items": { "type": "string" } },
                    "status": { "type": "string", "enum": ["running", "paused"] },
                    "active_version": { "type": "object", "properties": { "sha256": { "type": "string" }, "size": { "type": "integer" }, "capabilities": { "type": "array", "items": { "type": "string" } } } },
                    "history": { "type": "array", "items": { "type": "object", "properties": {
                        "from": { "type": ["string", "null"] }, "to": { "type": "string" }, "at_ms": { "type": "integer" },
                        "reason": { "type": "string" }, "first_offsets": { "type": "object", "additionalProperties": { "type": "integer" } } } } },
                    "partitions": { "type": "object", "additionalProperties": { "type": "object", "properties": {
                        "committed": { "type": ["integer", "null"] }, "high_watermark": { "type": ["integer", "null"] },
                        "lag": { "type": ["integer", "null"] }, "in_flight": { "type": "integer" }, "paused": { "type": "boolean" } } } },
                    "counters": { "type": "object", "properties": {
                        "received": { "type": "integer" }, "processed": { "type": "integer" },
                        "skipped": { "type": "integer" }, "retried": { "type": "integer" },
                        "dead_lettered": { "type": "integer" }, "published": { "type": "integer" } } },
                    "activity": { "type": "object", "description": "how much the counters grew in each of the last intervals (sampled every interval_ms while the server runs, ten minutes kept)", "properties": {
                        "interval_ms": { "type": "integer" },
                        "samples": { "type": "array", "items": { "type": "object", "properties": {
                            "at_ms": { "type": "integer" }, "processed": { "type": "integer" }, "skipped": { "type": "integer" },
                            "retried": { "type": "integer" }, "dead_lettered": { "type": "integer" } } } } } },
                    "max_replays": { "type": "integer", "description": "how many times one record may be replayed from the dead-letter topic (the loop guard)" } } },
                "SwapReport": { "type": "object", "properties": {
                    "handler": { "type": "string" }, "previous": { "type": "string" }, "active": { "type": "string" },
                    "load": { "type": "string", "enum": ["compiled", "cache"] },
                    "compile_ms": { "type": "number" }, "swap_us": { "type": "number" } } }
            }
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
            "200": { "description": "what was replayed and what was refused, with reasons", "content": { "application/json": { "schema": { "type": "object", "properties": {
                "replayed": { "type": "array", "items": { "type": "object" } }, "refused": { "type": "array", "items": { "type": "object" } }, "stopped": { "type": ["string", "null"] } } } } } },
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
