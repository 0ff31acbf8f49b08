#!/usr/bin/env python3
# Writes docs/openapi.json, the OpenAPI 3.1 description of the admin API: run it after
# changing an operation. src/admin/openapi.rs checks the result against the router (every
# route described, nothing else, roles as enforced); tests/openapi.rs runs schemathesis on it.
import json
TENANT = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$", "description": "tenant id (CONTRACT.md §2)"}
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def err(desc): return {"description": desc, "content": {"application/json": {"schema": ref("Error")}}}
def okj(schema, desc="ok"): return {"description": desc, "content": {"application/json": {"schema": schema}}}
COMMON = {"400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"},
          "403": {"$ref": "#/components/responses/Forbidden"}, "404": {"$ref": "#/components/responses/NotFound"},
          "405": {"$ref": "#/components/responses/MethodNotAllowed"}, "413": {"$ref": "#/components/responses/TooLarge"},
          "500": {"$ref": "#/components/responses/Internal"}, "503": {"$ref": "#/components/responses/Unavailable"}}
def op(name, summary, role, ok, params=(), body=None, extra=None, query=()):
    o = {"operationId": name, "summary": summary, "x-keyward-role": role, "tags": [name.split(".")[0]],
         "responses": {"200": ok, **COMMON, **(extra or {})}}
    ps = [{"$ref": f"#/components/parameters/{p}"} for p in params] + list(query)
    if ps: o["parameters"] = ps
    if body: o["requestBody"] = body
    return o
def q(name, schema, desc): return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}
jsonbody = lambda schema, desc: {"required": True, "description": desc, "content": {"application/json": {"schema": schema}}}
conflict = {"409": {"$ref": "#/components/responses/Conflict"}}
paths = {
 "/v1/tenants": {"get": op("tenants.list", "Tenant ids, paginated", "viewer",
    okj({"type": "object", "required": ["tenants", "next"], "properties": {"tenants": {"type": "array", "items": TENANT}, "next": {"oneOf": [TENANT, {"type": "null"}], "description": "pass as `after` for the next page"}}}),
    query=[q("after", TENANT, "start after this tenant"), q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size")])},
 "/v1/tenants/{tenant}": {"delete": op("tenant.delete", "Shred a tenant: its data key and every credential", "operator",
    okj({"type": "object", "required": ["tenant", "deleted"], "properties": {"tenant": TENANT, "deleted": {"type": "array", "items": ref("Status"), "description": "the credentials removed"}}}), ["tenant"], extra=conflict)},
 "/v1/tenants/{tenant}/credentials": {"get": op("credentials.list", "A tenant's credentials, masked", "viewer",
    okj({"type": "object", "required": ["tenant", "credentials"], "properties": {"tenant": TENANT, "credentials": {"type": "array", "items": ref("Status")}}}), ["tenant"],
    query=[q("include_deleted", {"type": "string", "enum": ["true", "false"]}, "list soft-deleted ones too")])},
 "/v1/tenants/{tenant}/routes": {"get": op("tenant.routes", "The routes (provider ids) that lead to a tenant", "viewer",
    okj({"type": "object", "required": ["tenant", "routes"], "properties": {"tenant": TENANT, "routes": {"type": "array", "items": {"type": "object", "required": ["kind", "id"], "properties": {"kind": {"type": "string"}, "id": {"type": "string"}}}}}}), ["tenant"])},
 "/v1/stats": {"get": op("stats", "The daemon's counters: requests and errors per provider, webhook verifications by reason, cache hits and misses, Google refreshes", "viewer",
    okj({"type": "object", "required": ["counters"], "properties": {"counters": {"type": "array", "items": {"type": "object", "required": ["name", "labels", "value"], "properties": {"name": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}, "value": {"type": "number"}}}}}}))},
 "/v1/tenants/{tenant}/credentials/{provider}": {
    "put": op("credential.put", "Create or replace a credential (secret fields in the body only)", "operator", okj(ref("PutAnswer")), ["tenant", "provider"],
        body=jsonbody({"type": "object", "additionalProperties": True, "description": "the provider's fields (PROVIDERS.md)"}, "credential fields"),
        extra={"422": {"$ref": "#/components/responses/Unprocessable"}, "502": {"$ref": "#/components/responses/BadGateway"}, **conflict},
        query=[q("verify", {"type": "string", "enum": ["true", "false"]}, "check with the provider before storing")]),
    "get": op("credential.get", "A credential's status, masked", "viewer", okj(ref("Status")), ["tenant", "provider"]),
    "delete": op("credential.delete", "Soft delete (restorable for deleted_retention)", "operator", okj(ref("Status")), ["tenant", "provider"], extra=conflict)},
 "/v1/tenants/{tenant}/credentials/{provider}/restore": {"post": op("credential.restore", "Undo a soft delete", "operator", okj(ref("Status")), ["tenant", "provider"], extra=conflict)},
 "/v1/tenants/{tenant}/credentials/{provider}/verify": {"post": op("credential.verify", "Live check against the provider, then route discovery", "operator",
    okj(ref("VerifyAnswer")), ["tenant", "provider"], extra={"502": {"$ref": "#/components/responses/BadGateway"}, **conflict})},
 "/v1/tenants/{tenant}/credentials/{provider}/callback-url": {"post": op("credential.callback_url", "The URL to configure at the provider for this tenant's deliveries; for Deepgram it embeds the credentials keyward checks (audited)", "operator",
    okj({"type": "object", "required": ["callback_url", "embeds_credentials"], "properties": {"callback_url": {"type": "string"}, "embeds_credentials": {"type": "boolean"}, "param": {"type": ["string", "null"]}}}), ["tenant", "provider"], extra=conflict)},
 "/v1/tenants/{tenant}/oauth/{provider}/start": {"post": op("oauth.start", "Start an OAuth provider's connect flow (Google, or an authorization_code provider of [providers.*] oauth2): the authorization URL to hand to the tenant, and the redirect URI to register with the provider", "operator",
    okj({"type": "object", "required": ["authorization_url", "redirect_uri", "expires_in"], "properties": {"authorization_url": {"type": "string"}, "redirect_uri": {"type": "string"}, "expires_in": {"type": "integer"}}}), ["tenant", "provider"], extra=conflict)},
 "/v1/routes/{kind}/{id}": {
    "put": op("route.put", "Point a provider id at a tenant (webhook routing)", "operator", okj(ref("Route")), ["kind", "id"],
        body=jsonbody({"type": "object", "required": ["tenant"], "properties": {"tenant": TENANT}}, "the owner"), extra=conflict),
    "get": op("route.get", "Who a provider id routes to", "viewer", okj(ref("Route")), ["kind", "id"]),
    "delete": op("route.delete", "Remove a route", "operator",
        okj({"type": "object", "required": ["kind", "id", "deleted"], "properties": {"kind": {"type": "string"}, "id": {"type": "string"}, "deleted": {"type": "boolean"}}}), ["kind", "id"], extra=conflict)},
 "/v1/audit": {"get": op("audit.list", "Audit entries, oldest first", "viewer",
    okj({"type": "object", "required": ["entries", "head"], "properties": {"entries": {"type": "array", "items": ref("AuditEntry")}, "head": {"type": "integer", "minimum": 0}}}),
    query=[q("after", {"type": "integer", "minimum": 0}, "entries after this sequence number"), q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "page size"),
           q("wait", {"type": "integer", "minimum": 0, "maximum": 60, "default": 0}, "seconds to hold the request until an entry after `after` is committed (keyward audit tail --follow)")])},
 "/v1/audit/verify": {"get": op("audit.verify", "Check the hash chain and the records it covers", "viewer",
    okj(ref("ChainReport"), "the chain verifies"), extra={"409": okj(ref("ChainReport"), "the chain is broken: where and why")})},
 "/v1/audit/checkpoint": {"get": op("audit.checkpoint", "A signed checkpoint of the chain's head (not recorded), to keep outside the host", "viewer",
    okj(ref("Checkpoint")))},
 "/v1/keys/rotate": {"post": op("keys.rotate", "Re-wrap tenant keys under the active master key (resumable batches)", "admin", okj(ref("RotateReport")),
    query=[q("limit", {"type": "integer", "minimum": 1}, "tenant keys per call")], extra=conflict)},
 "/v1/keys/status": {"get": op("keys.status", "Tenant keys per wrapping source and key version", "viewer", okj(ref("KeyStatus")))},
 "/v1/log/level": {"put": op("log.level", "Change the log filter at run time", "admin",
    okj({"type": "object", "required": ["level"], "properties": {"level": {"type": "string"}}}),
    body=jsonbody({"type": "object", "required": ["level"], "properties": {"level": {"type": "string", "description": "a tracing filter: warn, keyward=debug,info"}}}, "the new filter"))},
 "/v1/users": {"get": op("users.list", "Named operators and their roles", "admin",
    okj({"type": "object", "required": ["users", "token_file"], "properties": {"users": {"type": "array", "items": {"type": "object", "required": ["name", "role"], "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}}}, "token_file": {"type": "boolean"}}}))},
 "/v1/openapi.json": {"get": op("openapi", "This description", "viewer", okj({"type": "object", "required": ["openapi", "paths"]}))},
}
WRAP = {"type": "object", "required": ["source", "key", "version"], "properties": {"source": {"type": "string"}, "key": {"type": "string"}, "version": {"type": "integer", "minimum": 0}}}
nullable_str = {"type": ["string", "null"]}
schemas = {
 "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string", "description": "CONTRACT.md §6 / §8"}, "message": {"type": "string", "description": "what went wrong and what to do"}}}}},
 "Status": {"type": "object", "required": ["tenant", "provider", "status", "fields", "hints", "version", "created_at", "updated_at", "last_verified_at", "last_error"], "properties": {
    "tenant": TENANT, "provider": {"type": "string"}, "status": {"type": "string", "enum": ["active", "inactive", "revoked"]},
    "fields": {"type": "object", "description": "non-secret fields"}, "hints": {"type": "object", "additionalProperties": {"type": "string"}, "description": "… and the last four characters of each secret"},
    "version": {"type": "integer", "minimum": 1}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
    "last_verified_at": nullable_str, "last_error": nullable_str, "deleted_at": {"type": "string"}, "purge_after": {"type": "string"}}},
 "PutAnswer": {"allOf": [ref("Status"), {"type": "object", "properties": {"warnings": {"type": "array", "items": {"type": "string"}}, "verification": {}}}]},
 "VerifyAnswer": {"allOf": [ref("Status"), {"type": "object", "required": ["verification"], "properties": {"verification": {}, "routes": {"type": "object"}}}]},
 "Route": {"type": "object", "required": ["kind", "id", "tenant"], "properties": {"kind": {"type": "string"}, "id": {"type": "string"}, "tenant": TENANT}},
 "AuditEntry": {"type": "object", "required": ["seq", "ts", "actor", "action", "result", "prev", "hash"], "properties": {
    "seq": {"type": "integer", "minimum": 1}, "ts": {"type": "integer"}, "actor": {"type": "string", "description": "the user's name, uid:N on the socket, or token:… for the token_file"},
    "action": {"type": "string"}, "tenant": nullable_str, "provider": nullable_str, "target": nullable_str, "result": {"type": "string", "description": "ok, or error:<code>"},
    "prev": {"type": "string"}, "hash": {"type": "string"}}},
 "Checkpoint": {"type": "object", "required": ["kind", "seq", "head", "time", "public_key", "signature"], "properties": {
    "kind": {"const": "keyward.audit.checkpoint/v1"}, "seq": {"type": "integer", "minimum": 0}, "head": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "time": {"type": "string", "format": "date-time"}, "public_key": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "Ed25519, hex"},
    "signature": {"type": "string", "pattern": "^[0-9a-f]{128}$", "description": "Ed25519 over kind, seq, head and time, one per line"}}},
 "ChainReport": {"type": "object", "required": ["ok", "entries"], "properties": {"ok": {"type": "boolean"}, "entries": {"type": "integer", "minimum": 0}, "first_bad_seq": {"type": ["integer", "null"]}, "problem": nullable_str}},
 "RotateReport": {"type": "object", "required": ["rewrapped", "remaining", "total", "active_key_id", "target"], "properties": {
    "rewrapped": {"type": "integer", "minimum": 0}, "remaining": {"type": "integer", "minimum": 0}, "total": {"type": "integer", "minimum": 0}, "active_key_id": {"type": "string"}, "target": WRAP}},
 "KeyStatus": {"type": "object", "required": ["active", "sources", "mixed", "total"], "properties": {
    "active": WRAP, "sources": {"type": "array", "items": {"allOf": [WRAP, {"type": "object", "required": ["tenant_keys", "active"], "properties": {"tenant_keys": {"type": "integer", "minimum": 0}, "active": {"type": "boolean"}}}]}},
    "mixed": {"type": "boolean"}, "total": {"type": "integer", "minimum": 0}}},
}
responses = {n: err(d) for n, d in [("BadRequest", "a bad id, query or body (`bad_request`, `invalid_fields`, …)"), ("Unauthorized", "no or unknown token (`unauthorized`)"),
  ("Forbidden", "beyond the user's role (`forbidden_role`), or a uid the socket refuses (`forbidden`)"), ("NotFound", "no such tenant, credential, route or provider"),
  ("MethodNotAllowed", "another method is served here"), ("TooLarge", "the body is over 64 KiB"), ("Conflict", "a concurrent change; retry"),
  ("Unprocessable", "the provider refused the credential (`invalid_credential`)"), ("BadGateway", "the provider could not be asked (`provider_unavailable`)"),
  ("Internal", "keyward could not complete it (`internal`, `store_unavailable`)"), ("Unavailable", "the store or the KMS is unreachable (`store_unavailable`, `key_unavailable`)")]}
params = {
 "tenant": {"name": "tenant", "in": "path", "required": True, "schema": TENANT, "examples": {"acme": {"value": "acme"}}},
 "provider": {"name": "provider", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}, "description": "a configured provider (CONTRACT.md §3)", "examples": {p: {"value": p} for p in ["vapi", "twilio", "resend", "elevenlabs", "google"]}},
 "kind": {"name": "kind", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}, "description": "route kind, e.g. twilio-account, vapi-assistant"},
 "id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:+@=-]{1,256}$"}, "description": "the provider's id"},
}
doc = {"openapi": "3.1.0", "info": {"title": "keyward admin API", "version": "1", "description": "The admin API of keyward (CONTRACT.md §5, §8). Served at GET /v1/openapi.json on every admin listener. `x-keyward-role` is the least role an operation needs (viewer < operator < admin); the Unix socket is admin."},
  "servers": [{"url": "http://127.0.0.1:7444"}], "security": [{"bearer": []}],
  "paths": paths, "components": {"schemas": schemas, "responses": responses, "parameters": params,
  "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the token_file's token (admin) or a [[admin.users]] token"}}}}
open(__import__("os").path.join(__import__("os").path.dirname(__file__), "openapi.json"), "w").write(json.dumps(doc, indent=2) + "\n")
