#!/usr/bin/env python3
"""Local stand-in for two schema registry REST APIs (Confluent and Azure), for tests.

Usage:
  registry_standin.py [--tls-cert CERT --tls-key KEY] [--ignore-stdin]

Listens on 127.0.0.1, two ephemeral ports, and prints exactly one stdout line (flushed):
  listening CONFLUENT_PORT AZURE_PORT
then serves until killed. It also exits (os._exit(0)) when its stdin reaches EOF, so a
test that dies never leaves it behind: spawn it with a pipe as stdin and keep that pipe
open (`--ignore-stdin` turns this off, e.g. for `... < /dev/null &` in a shell).
The Confluent API is plain HTTP on CONFLUENT_PORT. The Azure API is HTTPS on AZURE_PORT
when --tls-cert/--tls-key are given, else plain HTTP (azure-core refuses to send bearer
tokens over plain HTTP). Both servers share one in-memory state; HTTP/1.1 keep-alive,
every answer carries Content-Length (except 204, which has no body).
Dependencies: the standard library, plus the `avro` package for compatibility checks.

Confluent Schema Registry subset (CONFLUENT_PORT; JSON, application/vnd.schemaregistry.v1+json)
  Errors are {"error_code": N, "message": "..."}: 40401 subject not found, 40402 version not
  found, 40403 schema not found (HTTP 404); 409 incompatible (HTTP 409); 42201 invalid schema,
  42202 invalid version, 42203 invalid compatibility level (HTTP 422); 401 Unauthorized.
  Global integer ids from 1; the same schema (schemaType + canonical JSON, i.e.
  json.dumps(json.loads(s), sort_keys=True, separators=(',', ':')); raw text for non-JSON)
  gets the same id in every subject. Query parameters (normalize, format, ...) are ignored.
  POST /subjects/{s}/versions       {"schema", "schemaType"?, "references"?} ->
        {"id", "version", "subject", "schema"}. Already a version of s -> that one. Else
        checked against the latest version (all versions for *_TRANSITIVE) at the subject's
        level (default BACKWARD): BACKWARD = new schema reads data written with the old one,
        FORWARD = old reads new, FULL = both, NONE = anything. Only AVRO is checked/parsed.
  POST /subjects/{s}                lookup {"schema"} -> {"subject","version","id","schema"}
  GET  /subjects                    ["s", ...]
  GET  /subjects/{s}/versions       [1, 2, ...]
  GET  /subjects/{s}/versions/{v|latest}         {"subject","version","id","schema"}
  GET  /subjects/{s}/versions/{v|latest}/schema  the raw schema text
  GET  /schemas/ids/{id}            {"schema"} (+"schemaType" if not AVRO, +"references")
  GET  /schemas/ids/{id}/versions   [{"subject", "version"}, ...]
  GET  /schemas/ids/{id}/subjects   ["s", ...]
  GET  /schemas/types               ["AVRO", "JSON", "PROTOBUF"]
  POST /compatibility/subjects/{s}/versions/{v|latest}  {"is_compatible": bool} (true when the
        subject has no versions; ?verbose=true adds "messages")
  GET|PUT|DELETE /config, /config/{s}   GET -> {"compatibilityLevel": L} (a subject without its
        own level reports the global one); PUT {"compatibility": L} -> {"compatibility": L}
  Basic auth: if env STANDIN_BASIC_AUTH="user:pass" is set, every Confluent API request must
  carry it, else HTTP 401 {"error_code": 401, "message": "Unauthorized"}.

Azure Schema Registry data plane subset (AZURE_PORT; what azure-schemaregistry 1.3 calls)
  Any api-version is accepted. Every request needs `Authorization: Bearer <non-empty>`, else
  401 {"error": {"code": "Unauthorized", "message": ...}}. Errors: {"error": {"code", "message"}}.
  Schema ids are 32 lowercase hex chars; a group exists on first use.
  Property headers: Schema-Id, Schema-Id-Location, Location, Schema-Group-Name, Schema-Name,
  Schema-Version (int), Content-Type.
  PUT  /$schemaGroups/{g}/schemas/{name}  body = schema, Content-Type
        "application/json; serialization=Avro|Json" or "text/plain; charset=utf-8" (Custom).
        Identical (canonical) schema already a version of g/name -> its id; else (Avro only)
        checked against the previous version at the group's level (Backward by default;
        Backward/Forward/Full/None), incompatible -> 400 InvalidRequest "schema is incompatible:
        ...", unparseable -> 400 InvalidSchema. Success: 204 + property headers (the SDK only
        accepts 204 here).
  POST /$schemaGroups/{g}/schemas/{name}:get-id  body = schema -> 204 + property headers, or
        404 ItemNotFound.
  GET  /$schemaGroups/$schemas/{id}      200 body = schema, Content-Type
        "application/json;serialization=Avro" (or ...=Json / text/plain), property headers.
  GET  /$schemaGroups/{g}/schemas/{name}/versions      {"Value": [1, 2, ...]}
  GET  /$schemaGroups/{g}/schemas/{name}/versions/{v}  like get by id
  GET  /$schemaGroups                                  {"Value": ["g", ...]}

Managed identity token endpoint (both ports, no fault injection; App Service flow)
  GET /msi/token?api-version=2019-08-01&resource=R  with header X-IDENTITY-HEADER equal to env
  STANDIN_IDENTITY_HEADER (default "standin") -> 200 {"access_token": "tok-<n>",
  "expires_on": "<unix seconds now+3600, as a string>", "resource": R, "token_type": "Bearer"};
  wrong/missing header -> 401; no resource -> 400.

Control API (both ports, no auth)
  POST /-/fault  {"api": "confluent"|"azure", "status": 503|429|401|403|500|..., "count": N,
                  "retry_after": secs?}  the next N requests to that API (not /-/ nor /msi) get
                  that status with a JSON error body in the API's error shape (+ Retry-After for
                  429/503 when given); count -1 = until cleared. Replaces that API's fault.
  POST /-/clear  clears all faults.
  GET  /-/stats  {"confluent_requests", "azure_requests", "msi_requests", "faulted",
                  "tokens": [distinct bearer tokens seen, in order]}
  POST /-/azure/compat  {"group": g, "level": "Backward"|"None"|"Forward"|"Full"}
"""

import argparse
import base64
import http.server
import json
import os
import socket
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

import avro.compatibility
import avro.errors
import avro.name
import avro.schema

CONFLUENT_CT = "application/vnd.schemaregistry.v1+json"
CONFLUENT_LEVELS = (
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
)
AZURE_LEVELS = {"none": "None", "backward": "Backward", "forward": "Forward", "full": "Full"}
AZURE_CONTENT_TYPES = {
    "Avro": "application/json;serialization=Avro",
    "Json": "application/json;serialization=Json",
    "Custom": "text/plain; charset=utf-8",
}
STATUS_CODES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 408: "RequestTimeout",
    409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway",
    503: "ServiceUnavailable", 504: "GatewayTimeout",
}


class ApiError(Exception):
    """An error answer: HTTP status plus API-specific code and message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# ---------------------------------------------------------------------------------------------
# Schema helpers


def canonical(text, schema_type="AVRO"):
    """Canonical form used for identity: compact sorted JSON, raw text for non-JSON schemas."""
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        if schema_type.upper() in ("AVRO", "JSON"):
            raise
        return text.strip()


def parse_avro(text, references=()):
    """Parses an Avro schema; `references` are schema texts whose named types it may use."""
    names = avro.name.Names()
    for ref in references:
        avro.schema.make_avsc_object(json.loads(ref), names)
    return avro.schema.make_avsc_object(json.loads(text), names)


def avro_incompatibilities(reader, writer):
    """Messages explaining why `reader` cannot read data written with `writer` (empty: fine)."""
    result = avro.compatibility.ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return []
    msgs = sorted(result.messages) or [str(i) for i in result.incompatibilities] or ["incompatible"]
    return [f"{m} at {sorted(result.locations)}" for m in msgs]


def check_level(level, new, olds):
    """Compatibility problems of parsed schema `new` against parsed `olds` at `level`."""
    level = level.upper()
    problems = []
    for old in olds:
        if level.startswith(("BACKWARD", "FULL")):
            problems += [f"reader(new) vs writer(old): {m}" for m in avro_incompatibilities(new, old)]
        if level.startswith(("FORWARD", "FULL")):
            problems += [f"reader(old) vs writer(new): {m}" for m in avro_incompatibilities(old, new)]
    return problems


# ---------------------------------------------------------------------------------------------
# Shared state


class State:
    """In-memory registries, faults and counters; guarded by one lock."""

    def __init__(self):
        self.lock = threading.RLock()
        # Confluent
        self.schemas = {}  # id -> {"schema", "type", "refs"}
        self.ids_by_key = {}  # (type, canonical) -> id
        self.subjects = {}  # subject -> [{"version", "id"}]
        self.global_level = "BACKWARD"
        self.subject_levels = {}
        # Azure
        self.az_schemas = {}  # id -> {"group", "name", "version", "text", "format", "canon"}
        self.az_groups = {}  # group -> {name: [id, ...]}
        self.az_levels = {}  # group -> level
        # faults and stats
        self.faults = {}  # api -> {"status", "count", "retry_after"}
        self.stats = {"confluent_requests": 0, "azure_requests": 0, "msi_requests": 0, "faulted": 0}
        self.tokens = []
        self.msi_issued = 0

    def take_fault(self, api):
        """Returns the fault to apply to this request of `api`, if any (and consumes it)."""
        with self.lock:
            f = self.faults.get(api)
            if not f:
                return None
            if f["count"] > 0:
                f["count"] -= 1
                if f["count"] == 0:
                    del self.faults[api]
            self.stats["faulted"] += 1
            return dict(f)

    def saw_token(self, token):
        with self.lock:
            if token not in self.tokens:
                self.tokens.append(token)


STATE = State()


# ---------------------------------------------------------------------------------------------
# Confluent API


def _subject_versions(subject):
    versions = STATE.subjects.get(subject)
    if not versions:
        raise ApiError(404, 40401, f"Subject '{subject}' not found.")
    return versions


def _find_version(subject, ver):
    versions = _subject_versions(subject)
    if ver == "latest" or ver == "-1":
        return versions[-1]
    try:
        v = int(ver)
    except ValueError:
        raise ApiError(422, 42202, f"The specified version '{ver}' is not a valid version id. "
                       "Allowed values are between [1, 2^31-1] and the string \"latest\"") from None
    for entry in versions:
        if entry["version"] == v:
            return entry
    raise ApiError(404, 40402, f"Version {v} not found.")


def _version_answer(subject, entry):
    s = STATE.schemas[entry["id"]]
    out = {"subject": subject, "version": entry["version"], "id": entry["id"], "schema": s["schema"]}
    if s["type"] != "AVRO":
        out["schemaType"] = s["type"]
    if s["refs"]:
        out["references"] = s["refs"]
    return out


def _ref_texts(refs):
    texts = []
    for ref in refs or []:
        try:
            entry = _find_version(ref["subject"], str(ref.get("version", "latest")))
        except (ApiError, KeyError, TypeError) as e:
            raise ApiError(422, 42201, f"Invalid schema: cannot resolve reference {ref!r}: {e}") from None
        texts.append(STATE.schemas[entry["id"]]["schema"])
    return texts


def _parse_submitted(body):
    """(text, type, refs, canonical key, parsed Avro or None) of a request body, or 42201."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise ApiError(422, 42201, "Invalid schema: the body must be a JSON object with a \"schema\" string")
    text = body["schema"]
    stype = (body.get("schemaType") or "AVRO").upper()
    refs = body.get("references") or []
    try:
        key = (stype, canonical(text, stype))
        parsed = parse_avro(text, _ref_texts(refs)) if stype == "AVRO" else None
    except ApiError:
        raise
    except (ValueError, TypeError, avro.errors.AvroException) as e:
        raise ApiError(422, 42201, f"Invalid schema {text}, details: {e}") from None
    return text, stype, refs, key, parsed


def _parsed(schema_id):
    s = STATE.schemas[schema_id]
    return parse_avro(s["schema"], _ref_texts(s["refs"])) if s["type"] == "AVRO" else None


def _level(subject):
    return STATE.subject_levels.get(subject, STATE.global_level)


def confluent_register(subject, body):
    with STATE.lock:
        text, stype, refs, key, parsed = _parse_submitted(body)
        versions = STATE.subjects.get(subject, [])
        sid = STATE.ids_by_key.get(key)
        for entry in versions:
            if entry["id"] == sid:
                return 200, {"id": sid, "version": entry["version"], "subject": subject, "schema": text}
        level = _level(subject)
        if versions and level != "NONE" and parsed is not None:
            olds = versions if level.endswith("_TRANSITIVE") else versions[-1:]
            old_parsed = [_parsed(e["id"]) for e in olds]
            old_parsed = [p for p in old_parsed if p is not None]
            problems = check_level(level, parsed, old_parsed)
            if problems:
                raise ApiError(409, 409, f"Schema being registered is incompatible with an earlier schema for "
                                         f"subject \"{subject}\", details: {problems} (level {level})")
        if sid is None:
            sid = len(STATE.schemas) + 1
            STATE.schemas[sid] = {"schema": text, "type": stype, "refs": refs}
            STATE.ids_by_key[key] = sid
        version = versions[-1]["version"] + 1 if versions else 1
        STATE.subjects.setdefault(subject, []).append({"version": version, "id": sid})
        return 200, {"id": sid, "version": version, "subject": subject, "schema": text}


def confluent_lookup(subject, body):
    with STATE.lock:
        versions = _subject_versions(subject)
        _, _, _, key, _ = _parse_submitted(body)
        sid = STATE.ids_by_key.get(key)
        for entry in versions:
            if entry["id"] == sid:
                return 200, _version_answer(subject, entry)
        raise ApiError(404, 40403, "Schema not found")


def confluent_compat(subject, ver, body, verbose):
    with STATE.lock:
        _, _, _, _, parsed = _parse_submitted(body)
        if not STATE.subjects.get(subject):
            if ver in ("latest", "-1"):
                return 200, {"is_compatible": True}
            raise ApiError(404, 40401, f"Subject '{subject}' not found.")
        entry = _find_version(subject, ver)
        level = _level(subject)
        old = _parsed(entry["id"])
        problems = [] if level == "NONE" or parsed is None or old is None else check_level(level, parsed, [old])
        out = {"is_compatible": not problems}
        if verbose:
            out["messages"] = problems
        return 200, out


def _valid_level(body):
    level = body.get("compatibility") if isinstance(body, dict) else None
    if not isinstance(level, str) or level.upper() not in CONFLUENT_LEVELS:
        raise ApiError(422, 42203, f"Invalid compatibility level {level!r}")
    return level.upper()


def confluent_route(method, parts, query, body):
    """Dispatches one Confluent API request; returns (status, json-able) or raises ApiError."""
    n = len(parts)
    with STATE.lock:
        if parts == ["subjects"] and method == "GET":
            return 200, list(STATE.subjects)
        if n >= 2 and parts[0] == "subjects":
            subject = parts[1]
            if n == 2 and method == "POST":
                return confluent_lookup(subject, body)
            if n == 3 and parts[2] == "versions":
                if method == "POST":
                    return confluent_register(subject, body)
                if method == "GET":
                    return 200, [e["version"] for e in _subject_versions(subject)]
            if n in (4, 5) and parts[2] == "versions" and method == "GET":
                entry = _find_version(subject, parts[3])
                if n == 4:
                    return 200, _version_answer(subject, entry)
                if parts[4] == "schema":
                    return 200, STATE.schemas[entry["id"]]["schema"]
        if n >= 3 and parts[:2] == ["schemas", "ids"] and method == "GET":
            try:
                sid = int(parts[2])
            except ValueError:
                sid = None
            s = STATE.schemas.get(sid)
            if s is None:
                raise ApiError(404, 40403, "Schema not found")
            uses = [(subj, e["version"]) for subj, vs in STATE.subjects.items() for e in vs if e["id"] == sid]
            if n == 3:
                out = {"schema": s["schema"]}
                if s["type"] != "AVRO":
                    out["schemaType"] = s["type"]
                if s["refs"]:
                    out["references"] = s["refs"]
                return 200, out
            if n == 4 and parts[3] == "versions":
                return 200, [{"subject": subj, "version": v} for subj, v in uses]
            if n == 4 and parts[3] == "subjects":
                return 200, sorted({subj for subj, _ in uses})
        if parts == ["schemas", "types"] and method == "GET":
            return 200, ["AVRO", "JSON", "PROTOBUF"]
        if n == 5 and parts[0] == "compatibility" and parts[1] == "subjects" and parts[3] == "versions" \
                and method == "POST":
            verbose = query.get("verbose", ["false"])[0].lower() == "true"
            return confluent_compat(parts[2], parts[4], body, verbose)
        if parts and parts[0] == "config" and n <= 2:
            subject = parts[1] if n == 2 else None
            if method == "GET":
                return 200, {"compatibilityLevel": _level(subject) if subject else STATE.global_level}
            if method == "PUT":
                level = _valid_level(body)
                if subject:
                    STATE.subject_levels[subject] = level
                else:
                    STATE.global_level = level
                return 200, {"compatibility": level}
            if method == "DELETE":
                if subject:
                    old = STATE.subject_levels.pop(subject, STATE.global_level)
                else:
                    old, STATE.global_level = STATE.global_level, "BACKWARD"
                return 200, {"compatibilityLevel": old}
    raise ApiError(404, 404, f"HTTP 404 Not Found ({method} /{'/'.join(parts)})")


# ---------------------------------------------------------------------------------------------
# Azure API


def _az_format(content_type):
    ct = (content_type or "").replace(" ", "").lower()
    if ct.startswith("text/plain"):
        return "Custom"
    for param in ct.split(";")[1:]:
        if param.startswith("serialization="):
            fmt = param.split("=", 1)[1]
            return {"avro": "Avro", "json": "Json"}.get(fmt, fmt.capitalize())
    raise ApiError(415, "InvalidSchemaType", f"unsupported schema content type {content_type!r}")


def _az_canonical(text, fmt):
    if fmt in ("Avro", "Json"):
        try:
            return canonical(text)
        except ValueError as e:
            raise ApiError(400, "InvalidSchema", f"schema is not valid JSON: {e}") from None
    return text.strip()


def _az_headers(ctx, schema_id):
    s = STATE.az_schemas[schema_id]
    base = f"{ctx['scheme']}://{ctx['host']}"
    api = urllib.parse.quote(ctx["api_version"])
    g, name = urllib.parse.quote(s["group"], safe=""), urllib.parse.quote(s["name"], safe="")
    return {
        "Schema-Id": schema_id,
        "Schema-Id-Location": f"{base}/$schemaGroups/$schemas/{schema_id}?api-version={api}",
        "Location": f"{base}/$schemaGroups/{g}/schemas/{name}/versions/{s['version']}?api-version={api}",
        "Schema-Group-Name": s["group"],
        "Schema-Name": s["name"],
        "Schema-Version": str(s["version"]),
        "Content-Type": AZURE_CONTENT_TYPES.get(s["format"], AZURE_CONTENT_TYPES["Custom"]),
    }


def _az_find(group, name, canon, fmt):
    for sid in STATE.az_groups.get(group, {}).get(name, []):
        s = STATE.az_schemas[sid]
        if s["canon"] == canon and s["format"] == fmt:
            return sid
    return None


def _az_not_found(what):
    return ApiError(404, "ItemNotFound", f"{what} does not exist.")


def azure_register(ctx, group, name, text, content_type):
    fmt = _az_format(content_type)
    canon = _az_canonical(text, fmt)
    with STATE.lock:
        sid = _az_find(group, name, canon, fmt)
        if sid is None:
            ids = STATE.az_groups.setdefault(group, {}).get(name, [])
            parsed = None
            if fmt == "Avro":
                try:
                    parsed = parse_avro(text)
                except (ValueError, TypeError, avro.errors.AvroException) as e:
                    raise ApiError(400, "InvalidSchema", f"invalid Avro schema: {e}") from None
            level = STATE.az_levels.get(group, "Backward")
            if ids and parsed is not None and level != "None":
                prev = STATE.az_schemas[ids[-1]]
                if prev["format"] == "Avro":
                    problems = check_level(level, parsed, [parse_avro(prev["text"])])
                    if problems:
                        raise ApiError(400, "InvalidRequest", f"schema is incompatible: {problems} "
                                                              f"(group {group} level {level})")
            sid = uuid.uuid4().hex
            STATE.az_schemas[sid] = {"group": group, "name": name, "version": len(ids) + 1, "text": text,
                                     "format": fmt, "canon": canon}
            STATE.az_groups[group][name] = ids + [sid]
        return 204, _az_headers(ctx, sid), b""


def azure_get_id(ctx, group, name, text, content_type):
    fmt = _az_format(content_type)
    canon = _az_canonical(text, fmt)
    with STATE.lock:
        sid = _az_find(group, name, canon, fmt)
        if sid is None:
            raise _az_not_found(f"Schema '{group}/{name}' with the given content")
        return 204, _az_headers(ctx, sid), b""


def _az_schema_answer(ctx, sid):
    return 200, _az_headers(ctx, sid), STATE.az_schemas[sid]["text"].encode("utf-8")


def azure_route(ctx, method, parts, body, content_type):
    """Dispatches one Azure API request; returns (status, headers, body bytes) or raises ApiError."""
    n = len(parts)
    if not parts or parts[0] != "$schemaGroups":
        raise ApiError(404, "NotFound", f"no such resource /{'/'.join(parts)}")
    with STATE.lock:
        if n == 1 and method == "GET":
            return 200, {"Content-Type": "application/json"}, json.dumps({"Value": list(STATE.az_groups)}).encode()
        if n == 3 and parts[1] == "$schemas" and method == "GET":
            if parts[2] not in STATE.az_schemas:
                raise _az_not_found(f"Schema id '{parts[2]}'")
            return _az_schema_answer(ctx, parts[2])
        if n >= 4 and parts[2] == "schemas":
            group, name = parts[1], parts[3]
            text = body.decode("utf-8", "replace")
            if n == 4 and method == "PUT":
                return azure_register(ctx, group, name, text, content_type)
            if n == 4 and method == "POST" and name.endswith(":get-id"):
                return azure_get_id(ctx, group, name[: -len(":get-id")], text, content_type)
            if n in (5, 6) and parts[4] == "versions" and method == "GET":
                ids = STATE.az_groups.get(group, {}).get(name)
                if not ids:
                    raise _az_not_found(f"Schema '{group}/{name}'")
                if n == 5:
                    versions = [STATE.az_schemas[i]["version"] for i in ids]
                    return 200, {"Content-Type": "application/json"}, json.dumps({"Value": versions}).encode()
                for sid in ids:
                    if str(STATE.az_schemas[sid]["version"]) == parts[5]:
                        return _az_schema_answer(ctx, sid)
                raise _az_not_found(f"Schema '{group}/{name}' version {parts[5]}")
    raise ApiError(404, "NotFound", f"no such resource {method} /{'/'.join(parts)}")


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class Handler(http.server.BaseHTTPRequestHandler):
    """One handler class for both ports; `server.api` says which registry API it serves."""

    protocol_version = "HTTP/1.1"
    server_version = "registry-standin/1"
    timeout = 300  # idle keep-alive connections are dropped after this many seconds

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    # -- I/O -------------------------------------------------------------------------------

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status, body=b"", headers=None):
        self.send_response(status)
        headers = dict(headers or {})
        for k, v in headers.items():
            self.send_header(k, v)
        if status in (204, 304):
            body = b""
        else:
            if not any(k.lower() == "content-type" for k in headers) and body:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status, obj, content_type="application/json", headers=None):
        h = {"Content-Type": content_type}
        h.update(headers or {})
        self._send(status, json.dumps(obj).encode("utf-8"), h)

    def _send_error(self, api, err):
        if api == "confluent":
            self._send_json(err.status, {"error_code": err.code, "message": err.message}, CONFLUENT_CT,
                            err.headers)
        else:
            self._send_json(err.status, {"error": {"code": err.code, "message": err.message}},
                            headers=err.headers)

    # -- dispatch --------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        raw_parts = [p for p in url.path.split("/") if p]
        parts = [urllib.parse.unquote(p) for p in raw_parts]
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer " and auth[7:].strip():
            STATE.saw_token(auth[7:].strip())
        try:
            if parts[:1] == ["-"]:
                self._control(parts[1:], body)
            elif parts[:2] == ["msi", "token"]:
                self._msi(query)
            else:
                self._api(self.server.api, parts, query, body, auth)
        except ApiError as err:
            self._send_error(self.server.api if parts[:1] != ["-"] else "confluent", err)
        except Exception as e:  # pylint: disable=broad-except
            traceback.print_exc(file=sys.stderr)
            self._send_error(self.server.api, ApiError(500, 50001 if self.server.api == "confluent"
                                                       else "InternalServerError", f"internal error: {e}"))

    def _api(self, api, parts, query, body, auth):
        with STATE.lock:
            STATE.stats[f"{api}_requests"] += 1
        fault = STATE.take_fault(api)
        if fault is not None:
            headers = {}
            if fault.get("retry_after") is not None and fault["status"] in (429, 503):
                headers["Retry-After"] = str(fault["retry_after"])
            code = fault["status"] if api == "confluent" else STATUS_CODES.get(fault["status"], "Error")
            raise ApiError(fault["status"], code, f"injected fault (HTTP {fault['status']})", headers)
        if api == "confluent":
            expected = os.environ.get("STANDIN_BASIC_AUTH")
            if expected:
                scheme, _, cred = auth.strip().partition(" ")
                try:
                    given = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
                except ValueError:
                    given = None
                if scheme.lower() != "basic" or given != expected:
                    raise ApiError(401, 401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="standin"'})
            try:
                parsed_body = json.loads(body) if body else None
            except ValueError:
                raise ApiError(422, 42201, "Invalid schema: request body is not JSON") from None
            status, obj = confluent_route(self.command, parts, query, parsed_body)
            if isinstance(obj, str):
                self._send(status, obj.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"})
            else:
                self._send_json(status, obj, CONFLUENT_CT)
        else:
            if auth[:7].lower() != "bearer " or not auth[7:].strip():
                raise ApiError(401, "Unauthorized", "missing or malformed bearer token")
            ctx = {
                "scheme": self.server.scheme,
                "host": self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}",
                "api_version": query.get("api-version", ["2022-10"])[0],
            }
            status, headers, out = azure_route(ctx, self.command, parts, body, self.headers.get("Content-Type"))
            self._send(status, out, headers)

    def _msi(self, query):
        with STATE.lock:
            STATE.stats["msi_requests"] += 1
        expected = os.environ.get("STANDIN_IDENTITY_HEADER", "standin")
        if self.headers.get("X-IDENTITY-HEADER") != expected:
            self._send_json(401, {"error": "unauthorized", "error_description": "bad X-IDENTITY-HEADER"})
            return
        resource = query.get("resource", [""])[0]
        if not resource:
            self._send_json(400, {"error": "invalid_request", "error_description": "resource is required"})
            return
        with STATE.lock:
            STATE.msi_issued += 1
            n = STATE.msi_issued
        self._send_json(200, {"access_token": f"tok-{n}", "expires_on": str(int(time.time()) + 3600),
                              "resource": resource, "token_type": "Bearer"})

    def _control(self, parts, body):
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            raise ApiError(400, 400, "body is not JSON") from None
        if parts == ["stats"] and self.command == "GET":
            with STATE.lock:
                out = dict(STATE.stats, tokens=list(STATE.tokens))
            self._send_json(200, out)
        elif parts == ["fault"] and self.command == "POST":
            api = req.get("api")
            if api not in ("confluent", "azure") or not isinstance(req.get("status"), int):
                raise ApiError(400, 400, 'want {"api": "confluent"|"azure", "status": int, "count": N}')
            count = int(req.get("count", 1))
            with STATE.lock:
                if count == 0:
                    STATE.faults.pop(api, None)
                else:
                    STATE.faults[api] = {"status": req["status"], "count": count,
                                         "retry_after": req.get("retry_after")}
            self._send_json(200, {"ok": True})
        elif parts == ["clear"] and self.command == "POST":
            with STATE.lock:
                STATE.faults.clear()
            self._send_json(200, {"ok": True})
        elif parts == ["azure", "compat"] and self.command == "POST":
            level = AZURE_LEVELS.get(str(req.get("level", "")).lower())
            if not req.get("group") or level is None:
                raise ApiError(400, 400, 'want {"group": g, "level": "Backward"|"None"|"Forward"|"Full"}')
            with STATE.lock:
                STATE.az_levels[req["group"]] = level
            self._send_json(200, {"group": req["group"], "level": level})
        else:
            raise ApiError(404, 404, f"no control endpoint {self.command} /-/{'/'.join(parts)}")


class Server(http.server.ThreadingHTTPServer):
    """Threaded server; with `tls` set, each connection is wrapped in its own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api, tls=None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.api, self.tls = api, tls
        self.scheme = "https" if tls else "http"

    def finish_request(self, request, client_address):
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(30)
            conn = self.tls.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, ssl.SSLError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def _watch_stdin():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)  # pylint: disable=protected-access


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tls-cert", help="PEM certificate (chain) for the Azure port")
    p.add_argument("--tls-key", help="PEM private key for the Azure port")
    p.add_argument("--ignore-stdin", action="store_true", help="do not exit when stdin reaches EOF")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    confluent = Server("confluent")
    azure = Server("azure", tls)
    for srv in (confluent, azure):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    if not args.ignore_stdin:
        threading.Thread(target=_watch_stdin, daemon=True).start()
    sys.stdout.write(f"listening {confluent.server_address[1]} {azure.server_address[1]}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
