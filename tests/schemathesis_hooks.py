"""Schemathesis hooks for tests/openapi.rs.

`GET /v1/audit?wait=N` holds the request up to N seconds (up to 60) when nothing after
`after` is committed: a documented long poll, not a hang. Generated cases would hold the
run for minutes, so a wait above one second is cut to one; the hold itself is tested by
tests/audit_stream.rs.
"""

import schemathesis


@schemathesis.hook
def before_call(ctx, case, kwargs):
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("wait"), int) and query["wait"] > 1:
        query["wait"] = 1
