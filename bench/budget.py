#!/usr/bin/env python3
"""The per-request budget from `bench/run --budget`: perf counters of the proxy process
divided by the requests the load generator completed, keyward beside nginx, and the top of
each one's profile. Writes OUT/budget.json and prints a Markdown table. With `wh` after OUT:
the webhook path at 500/s, keyward beside the zero-work relay (BUDGET_ONLY=webhooks)."""
import json, os, sys

out = sys.argv[1]
NAMES = {
    "task-clock": "CPU µs", "context-switches": "context switches", "cpu-migrations": "migrations",
    "raw_syscalls:sys_enter": "syscalls", "probe_libc:malloc": "malloc", "probe_libc:calloc": "calloc",
    "probe_libc:realloc": "realloc",
}
if sys.argv[2:] == ["wh"]:
    MODES, BESIDE = (("wh", "webhook at 500/s, Standard Webhooks 1 KiB, 8 connections"),), "relay"
else:
    MODES, BESIDE = (("rate", "2,000 req/s, 16 connections"), ("sat", "saturation, 64 connections")), "nginx"
rows, tops = {}, {}
for mode, _ in MODES:
    for who in ("keyward", BESIDE):
        name = f"budget-{who}-{mode}"
        per = {}
        for run in (name + ".cpu", name):
            lg = json.load(open(os.path.join(out, run + ".json")))
            reqs = max(lg.get("requests", 0), 1)
            per.setdefault("requests", reqs)
            for line in open(os.path.join(out, run + ".perf")):
                parts = line.strip().split(",")
                if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
                    continue
                value, event = float(parts[0]), parts[2]
                if event == "task-clock":
                    value *= 1000  # msec -> µs
                label = NAMES.get(event, event.replace("syscalls:sys_enter_", ""))
                per[label] = round(value / reqs, 2)
        ust = os.path.join(out, name + ".ustime")
        if os.path.exists(ust):
            u0, s0, u1, s1, hz = (int(x) for x in open(ust).read().split())
            reqs = per["requests"]
            per["user CPU µs"] = round((u1 - u0) * 1e6 / hz / reqs, 1)
            per["kernel CPU µs"] = round((s1 - s0) * 1e6 / hz / reqs, 1)
        per["allocations"] = round(sum(per.get(k, 0) for k in ("malloc", "calloc", "realloc")), 2)
        rows[name] = per
        top = os.path.join(out, name + ".top")
        tops[name] = open(top).read().splitlines()[:15] if os.path.exists(top) else []
json.dump({"per_request": rows, "top": tops}, open(os.path.join(out, "budget.json"), "w"), indent=2)
keys = ["CPU µs", "user CPU µs", "kernel CPU µs", "syscalls", "context switches", "migrations", "allocations", "read", "recvfrom", "write", "writev", "sendto", "sendmsg", "epoll_wait", "futex", "sched_yield"]
for mode, title in MODES:
    k, n = rows[f"budget-keyward-{mode}"], rows[f"budget-{BESIDE}-{mode}"]
    print(f"\n| per request, {title} | keyward | {BESIDE} | keyward / {BESIDE} |\n| --- | ---: | ---: | ---: |")
    for key in keys:
        a, b = k.get(key, 0), n.get(key, 0)
        ratio = f"{a / b:.2f}" if b else "—"
        print(f"| {key} | {a} | {b} | {ratio} |")
    print(f"| requests measured | {k['requests']} | {n['requests']} | |")
h2 = {}
for who in ("keyward", "nginx"):
    p = os.path.join(out, f"h2load-{who}.json")
    if os.path.exists(p):
        h2[who] = json.load(open(p))
if len(h2) == 2:
    k, n = h2["keyward"], h2["nginx"]
    print("\n| h2load, HTTP/1.1, 64 connections, 200,000 requests | keyward | nginx | keyward / nginx |\n| --- | ---: | ---: | ---: |")
    print(f"| req/s | {k['rps']:.0f} | {n['rps']:.0f} | {k['rps'] / n['rps']:.2f} |")
    print(f"| CPU µs / request | {k['cpu_us_per_request']} | {n['cpu_us_per_request']} | {k['cpu_us_per_request'] / n['cpu_us_per_request']:.2f} |")
    json.dump({"per_request": rows, "top": tops, "h2load": h2}, open(os.path.join(out, "budget.json"), "w"), indent=2)
for name, lines in tops.items():
    print(f"\n{name}:")
    for l in lines:
        print("   " + l)
