//! The OpenAPI 3 document of `/api/v1` and `/oapi/v1`, served at `/openapi.json`.

use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, security: &str, body: Option<&str>, ok: &str) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{ security: [] }],
        "responses": {
            ok: {"description": "OK", "content": {"application/json": {}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

fn crud(prefix: &str, security: &str, doc: &mut serde_json::Map<String, Value>) {
    doc.insert(
        format!("{prefix}/jobs"),
        json!({
            "post": op("Create a job (preheat, get_task, delete_task: 201; get_image_distribution: answered at once, 200); 429 when the cluster's job_rate_limit is exceeded", security, Some("CreateJob"), "201"),
            "get": op("List jobs (?state=&type=&page=&per_page=)", security, None, "200"),
        }),
    );
    doc.insert(
        format!("{prefix}/jobs/{{id}}"),
        json!({"get": op("Get a job", security, None, "200")}),
    );
    doc.insert(
        format!("{prefix}/clusters"),
        json!({
            "post": op("Create a scheduler cluster", security, Some("Cluster"), "201"),
            "get": op("List scheduler clusters", security, None, "200"),
        }),
    );
    doc.insert(
        format!("{prefix}/clusters/{{id}}"),
        json!({
            "get": op("Get a cluster", security, None, "200"),
            "patch": op("Replace a cluster's fields", security, Some("Cluster"), "200"),
            "delete": op("Delete a cluster", security, None, "204"),
        }),
    );
}

/// `GET /openapi.json`
pub async fn document() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    crud("/api/v1", "session", &mut paths);
    crud("/oapi/v1", "personal_access_token", &mut paths);
    paths.insert("/api/v1/users/signin".into(), json!({"post": {"summary": "Sign in: {name, password} -> {token, expire}", "responses": {"200": {"description": "session token"}, "401": {"$ref": "#/components/responses/Error"}}}}));
    paths.insert(
        "/api/v1/users/signout".into(),
        json!({"post": op("End the session", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/users/me".into(),
        json!({"get": op("The signed-in user", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/personal-access-tokens".into(),
        json!({
            "post": op("Create a personal access token (shown once in `token`)", "session", Some("NewToken"), "201"),
            "get": op("List your tokens", "session", None, "200"),
        }),
    );
    paths.insert(
        "/api/v1/personal-access-tokens/{id}".into(),
        json!({"delete": op("Revoke a token", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/users".into(),
        json!({
            "get": op("List users (root only)", "session", None, "200"),
            "post": op("Add a user: {name, password, role: root|guest} (root only; guest is read-only)", "session", None, "201"),
        }),
    );
    paths.insert(
        "/api/v1/users/{id}".into(),
        json!({"delete": op("Delete a user with their sessions and tokens (root only)", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/peers".into(),
        json!({"get": op("Hosts announced to each cluster's scheduler, with last seen, tasks and bytes held (?scheduler_cluster_id=)", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/schedulers".into(),
        json!({"get": op("Registered schedulers", "session", None, "200")}),
    );
    paths.insert(
        "/api/v1/seed-peers".into(),
        json!({"get": op("Registered seed peers", "session", None, "200")}),
    );
    // Apart: one json! of it all passes the macro recursion limit.
    let preheat_args = json!({
        "type": "object", "required": ["type", "url"],
        "properties": {
            "type": {"type": "string", "enum": ["image", "file"]},
            "url": {"type": "string", "description": "image: http(s)://REGISTRY/v2/REPO/manifests/TAG; file: the file URL"},
            "urls": {"type": "array", "items": {"type": "string"}},
            "tag": {"type": "string"}, "application": {"type": "string"},
            "filteredQueryParams": {"type": "string", "description": "&-separated, added to the signed-URL parameters always filtered"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "for the origin; an Authorization header (Basic or Bearer) also answers the registry's auth challenge"},
            "username": {"type": "string"}, "password": {"type": "string"},
            "platform": {"type": "string", "description": "os/arch[/variant]"},
            "pieceLength": {"type": "integer", "minimum": 65536, "maximum": 67108864},
            "scope": {"type": "string", "enum": ["single_seed_peer", "all_seed_peers", "all_peers"]},
            "timeout": {"description": "seconds, or 90s / 30m / 2h"},
            "ips": {"type": "array", "items": {"type": "string"}, "description": "all_* scopes: only these hosts (before count and percentage)"},
            "count": {"type": "integer", "minimum": 1, "description": "all_* scopes: this many hosts, in host-id order"},
            "percentage": {"type": "integer", "minimum": 1, "maximum": 100, "description": "all_* scopes: this share of the hosts, rounded up"},
            "concurrent_peer_count": {"type": "integer", "minimum": 1, "description": "hosts filled at once"},
            "concurrent_task_count": {"type": "integer", "minimum": 1, "description": "tasks started at once on one host"},
        },
        "additionalProperties": false
    });
    let task_args = json!({
        "type": "object",
        "description": "get_task / delete_task: task_id, or url with the tag, application and filtered_query_params of its download",
        "properties": {
            "task_id": {"type": "string", "description": "sha256:<hex> (an image layer or blob), task:<hex> or the bare hex dfctl get prints (a file)"},
            "url": {"type": "string"}, "tag": {"type": "string"}, "application": {"type": "string"},
            "filtered_query_params": {"type": "string"},
            "timeout": {"description": "seconds, or 90s / 30m / 2h"},
            "concurrent_peer_count": {"type": "integer", "minimum": 1, "description": "delete_task only: hosts asked at once"},
        },
        "additionalProperties": false
    });
    let distribution_args = json!({
        "type": "object", "required": ["url"],
        "description": "get_image_distribution (answered at once with 200: image.layers and peers[].cached_layers)",
        "properties": {
            "url": {"type": "string", "description": "http(s)://REGISTRY/v2/REPO/manifests/TAG"},
            "platform": {"type": "string"}, "username": {"type": "string"}, "password": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "concurrent_layer_count": {"type": "integer", "minimum": 1},
            "timeout": {"description": "seconds, or 90s / 30m / 2h"},
        },
        "additionalProperties": false
    });
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "Dragonfly-rs manager", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "description": "token from POST /api/v1/users/signin"},
                "personal_access_token": {"type": "http", "scheme": "bearer", "description": "dfp_... token with scope job or cluster"},
            },
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "field": {"type": "string"}}},
                "CreateJob": {
                    "type": "object", "required": ["type", "args"],
                    "properties": {
                        "type": {"type": "string", "enum": ["preheat", "get_task", "delete_task", "get_image_distribution"]},
                        "bio": {"type": "string"},
                        "scheduler_cluster_ids": {"type": "array", "items": {"type": "integer"}},
                        "args": {"oneOf": [preheat_args, task_args, distribution_args]}
                    }
                },
                "Cluster": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "bio": {"type": "string"}, "is_default": {"type": "boolean"},
                    "scopes": {"type": "object", "properties": {"idc": {"type": "string"}, "location": {"type": "string"}, "cidrs": {"type": "array", "items": {"type": "string"}}, "hostnames": {"type": "array", "items": {"type": "string"}}}},
                    "config": {"type": "object", "properties": {"job_rate_limit": {"type": "integer", "minimum": 1}}},
                }},
                "NewToken": {"type": "object", "required": ["name", "scopes"], "properties": {
                    "name": {"type": "string"}, "bio": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string", "enum": ["job", "cluster"]}},
                    "expired_at": {"type": "string", "format": "date-time"}, "expires_in_days": {"type": "integer"},
                }},
            }
        }
    }))
}
