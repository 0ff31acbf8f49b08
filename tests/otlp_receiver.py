"""An OTLP/HTTP trace receiver for tests/otel.rs, built on the official protobuf
definitions (PyPI opentelemetry-proto): it decodes each ExportTraceServiceRequest and
appends one JSON object per span to OUT, and every raw request body to OUT.raw (so the
test can search the bytes keyward sent for canaries). The bound port goes to PORT_FILE.

usage: otlp_receiver.py PORT_FILE OUT
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PORT_FILE, OUT = sys.argv[1], sys.argv[2]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(415)
            self.end_headers()
            return
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        with open(OUT + ".raw", "ab") as raw:
            raw.write(body)
        with open(OUT, "a") as out:
            for rs in req.resource_spans:
                resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out.write(json.dumps({
                            "trace_id": sp.trace_id.hex(),
                            "span_id": sp.span_id.hex(),
                            "parent_span_id": sp.parent_span_id.hex(),
                            "name": sp.name,
                            "kind": sp.kind,
                            "status": sp.status.code,
                            "attributes": {kv.key: value(kv.value) for kv in sp.attributes},
                            "events": len(sp.events),
                            "start": sp.start_time_unix_nano,
                            "end": sp.end_time_unix_nano,
                            "resource": resource,
                            "scope": ss.scope.name,
                        }) + "\n")
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os  # noqa: E402

os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
