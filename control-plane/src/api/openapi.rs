//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the API.

use axum::Json;
use serde_json::{Value, json};

fn op(summary: &str, role: Option<&str>, responses: &[&str]) -> Value {
    let mut responses_obj = serde_json::Map::new();
    for code in responses {
        responses_obj.insert(
            (*code).to_owned(),
            json!({ "description": code_text(code) }),
        );
    }
    let mut operation = json!({ "summary": summary, "responses": responses_obj });
    if let Some(role) = role {
        operation["security"] = json!([{ "bearer": [] }]);
        operation["x-vantage-role"] = json!(role);
    }
    operation
}

fn code_text(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "204" => "No Content",
        "101" => "Switching Protocols (WebSocket)",
        "400" => "Invalid request",
        "401" => "Missing or invalid credentials",
        "403" => "Role too low",
        "404" => "Not found",
        "409" => "Conflict",
        "422" => "Invalid field",
        "413" => "Body too large",
        "429" => "Too many requests",
        "502" => "The receiver refused or could not be reached",
        _ => "Other",
    }
}

/// The document.
pub async fn document() -> Json<Value> {
    let read = ["200", "401", "403"];
    let mut document = json!({
        "openapi": "3.1.0",
        "info": { "title": "Vantage API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "object",
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } }
            }
        },
        "paths": {
            "/healthz": { "get": op("Liveness, store backend, and whether this replica leads", None, &["200"]) },
            "/metrics": { "get": op("Prometheus counters", None, &["200"]) },
            "/api/v1/enroll": { "post": op("Enroll an agent: token + CSR → id, certificate, CA, broker address", None, &["201", "400", "401", "422"]) },
            "/api/v1/uptime": { "get": op("Uptime over 24h, 7d, 30d and 90d (or ?window=30d,…) of every check or of ?checks=a,b, overall and per region, from hourly and daily rollups", Some("viewer"), &["200", "400", "401", "403", "404"]) },
            "/api/v1/checks/{id}/uptime": { "get": op("One check's uptime over 24h, 7d, 30d and 90d", Some("viewer"), &["200", "401", "403", "404"]) },
            "/api/v1/checks/{id}/series": { "get": op("A check's latency (min/avg/max, p50/p95/p99) and failures per region in steps (?from_ms=&to_ms=&step_ms=), from raw rows, minute or hour rollups", Some("viewer"), &["200", "400", "401", "403", "404"]) },
            "/api/v1/agents": { "get": op("List agents (?region=)", Some("viewer"), &read) },
            "/api/v1/agents/{id}": {
                "get": op("One agent", Some("viewer"), &["200", "401", "403", "404"]),
                "delete": op("Revoke an agent: disconnect it and refuse its certificate", Some("operator"), &["204", "401", "403", "404"])
            },
            "/api/v1/regions": { "get": op("Regions: agents, online count, assigned checks, checks on the fallback, status (ok, degraded: fallback, degraded: fallback (agents full), empty)", Some("viewer"), &read) },
            "/api/v1/verdicts": { "get": op("Every check's verdict (up, degraded, down, maintenance, paused, pending) with its reason and per-region evidence", Some("viewer"), &read) },
            "/api/v1/checks/{id}/transitions": { "get": op("A check's state changes with their evidence, newest first", Some("viewer"), &read) },
            "/api/v1/incidents": { "get": op("Incidents, newest first (?open=true, limit)", Some("viewer"), &["200", "400", "401", "403"]) },
            "/api/v1/incidents/{id}": { "get": op("An incident and its timeline", Some("viewer"), &["200", "401", "403", "404"]) },
            "/api/v1/incidents/{id}/ack": { "post": op("Acknowledge an incident (stops reminders)", Some("operator"), &["200", "401", "403", "404"]) },
            "/api/v1/incidents/{id}/notes": { "post": op("Add a note {text} to an incident's timeline", Some("operator"), &["201", "400", "401", "403", "404", "422"]) },
            "/api/v1/channels": {
                "get": op("Notification channels, without secrets", Some("operator"), &read),
                "post": op("Create a channel {id?, name, config: webhook|slack|ntfy|email, enabled, reminder_s, max_per_hour}", Some("admin"), &["201", "400", "401", "403", "409", "422"])
            },
            "/api/v1/channels/{id}": {
                "put": op("Replace a channel", Some("admin"), &["200", "400", "401", "403", "422"]),
                "delete": op("Delete a channel", Some("admin"), &["204", "401", "403", "404"])
            },
            "/api/v1/channels/{id}/test": { "post": op("Send a test notification now", Some("operator"), &["200", "401", "403", "404", "502"]) },
            "/api/v1/outbox": { "get": op("Notifications (?state=pending|delivered|dead, limit): attempts, last error; dead letters are kept", Some("operator"), &["200", "400", "401", "403"]) },
            "/api/v1/maintenance": {
                "get": op("Maintenance windows", Some("viewer"), &read),
                "post": op("Add a window {name, schedule: once|weekly, scope: checks, check_labels, regions, agent_labels}", Some("operator"), &["201", "400", "401", "403", "409", "422"])
            },
            "/api/v1/maintenance/{id}": { "delete": op("Delete a window", Some("operator"), &["204", "401", "403", "404"]) },
            "/api/v1/rules": {
                "get": op("Host-metric rules", Some("viewer"), &read),
                "post": op("Add a rule {name, selector, condition: threshold|disk_full}", Some("operator"), &["201", "400", "401", "403", "409", "422"])
            },
            "/api/v1/rules/{id}": { "delete": op("Delete a rule (its incidents are resolved)", Some("operator"), &["204", "401", "403", "404"]) },
            "/api/v1/enrollment-tokens": {
                "get": op("List enrollment tokens (no secrets)", Some("operator"), &read),
                "post": op("Create an enrollment token {region, labels, uses, ttl_s}", Some("operator"), &["201", "400", "401", "403", "422"])
            },
            "/api/v1/enrollment-tokens/{id}": { "delete": op("Delete an enrollment token", Some("operator"), &["204", "401", "403", "404"]) },
            "/api/v1/api-tokens": {
                "get": op("List API tokens: id, name, role, created_at_ms, revoked_at_ms (never a secret)", Some("admin"), &read),
                "post": op("Create an API token {role, name}", Some("admin"), &["201", "400", "401", "403", "422"])
            },
            "/api/v1/api-tokens/{id}": { "delete": op("Revoke an API token: refused from the next request or MQTT login on", Some("admin"), &["204", "401", "403", "404"]) },
            "/api/v1/checks": {
                "get": op("List checks (viewers get header values, bodies, send steps, URL credentials, query values and chain RPC paths as \"<redacted>\")", Some("viewer"), &read),
                "post": op("Create a check {id?, name, kind, interval_s, timeout_ms, regions, quorum (default: a majority), retries, recovery, agents_per_region, depends_on, labels, anomaly_z, enabled}", Some("operator"), &["201", "400", "401", "403", "409", "422"])
            },
            "/api/v1/checks/{id}": {
                "get": op("One check (redacted for viewers, as in the list)", Some("viewer"), &["200", "401", "403", "404"]),
                "put": op("Replace a check", Some("operator"), &["200", "400", "401", "403", "404", "422"]),
                "delete": op("Delete a check", Some("operator"), &["204", "401", "403", "404"])
            },
            "/api/v1/checks/{id}/run": { "post": op("Run a check now in its regions (or {regions}, each named once); one result or error per region", Some("operator"), &["200", "400", "401", "403", "404", "422", "429"]) },
            "/api/v1/probe": { "post": op("Run an ad-hoc check {kind, timeout_ms, regions} now (each region named once); nothing is stored", Some("operator"), &["200", "400", "401", "403", "422", "429"]) },
            "/api/v1/results": { "get": op("Results (?agent, check, region, from_ms, to_ms, limit); for viewers URLs in reasons lose credentials and query values", Some("viewer"), &["200", "400", "401", "403"]) },
            "/api/v1/metrics": { "get": op("Host metrics (?agent, region, from_ms, to_ms, limit)", Some("viewer"), &["200", "400", "401", "403"]) },
            "/api/v1/status/checks": { "get": op("Latest result per check and region", Some("viewer"), &read) },
            "/api/v1/live": { "get": op("Live feed: WebSocket on upgrade, else SSE (?region, agent, check, kind, source, token, latest)", Some("viewer"), &["101", "200", "401", "403"]) },
            "/api/v1/openapi.json": { "get": op("This document", None, &["200"]) }
        }
    });
    // Integrations and metric series, in a second literal (one would pass the macro's
    // recursion limit).
    let integrations = json!({
            "/api/v1/overview": { "get": op("Every check's state and each region's flags and latest outcome, compact: {regions, layout, checks: [[id, name, enabled, labels, state, reason, [[region index, flags, measured_at_ms]]]]}", Some("viewer"), &read) },
            "/api/v1/agents/{id}/series": { "get": op("An agent's host metrics (cpu_pct, mem_used_pct, load1, net_rx/tx_bytes_per_s, disk_used_pct of the fullest disk) as min/avg/max per step (?from_ms=&to_ms=&step_ms=), from raw samples, minute or hour rollups", Some("viewer"), &["200", "400", "401", "403", "404"]) },
            "/api/v1/sources": {
                "get": op("Integration sources (never a secret)", Some("viewer"), &read),
                "post": op("Create a source {id, kind: zabbix|helius|alchemy|hmac, secret?, incident_severity?}; the answer holds its secret, shown once", Some("admin"), &["201", "400", "401", "403", "409", "422"])
            },
            "/api/v1/sources/{id}": { "delete": op("Delete a source (its events stay)", Some("admin"), &["204", "401", "403", "404"]) },
            "/api/v1/integrations/zabbix": { "post": op("Zabbix webhook media type (provision/zabbix/): Authorization: Bearer <a Zabbix source's secret>; answers {event_id, duplicate, incident_id, incident_url}", None, &["200", "400", "401", "413", "429"]) },
            "/api/v1/integrations/{source}": { "post": op("A source's webhook: Zabbix (bearer or X-Vantage-Signature), Helius (its Authorization header), Alchemy (X-Alchemy-Signature), hmac (X-Vantage-Signature: sha256=<hex>); answers per-row outcomes", None, &["200", "400", "401", "413", "429"]) },
            "/api/v1/events": { "get": op("Events from sources, newest first (?source, status, before, limit)", Some("viewer"), &["200", "400", "401", "403"]) },
            "/api/v1/events/{id}": { "get": op("One event with the sender's payload (bounded)", Some("viewer"), &["200", "400", "401", "403", "404"]) },
            "/api/v1/external-nodes": { "get": op("Hosts sources named that map to no agent", Some("viewer"), &read) }
    });
    if let (Some(paths), Value::Object(more)) = (document["paths"].as_object_mut(), integrations) {
        paths.extend(more);
    }
    Json(document)
}
