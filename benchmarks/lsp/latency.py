#!/usr/bin/env python3
"""Keystroke latency of `sqlplan lsp` on the summary pipeline.

Starts `sqlplan lsp` in the repository, opens a template, then sends N full-text
changes that alternate between a broken and the original text, and times each
from the change sent to its diagnostics received (the broken text must get one
diagnostic, the original an empty list). Prints min/median/max and writes JSON.

    benchmarks/lsp/latency.py [SQLPLAN] [N] [OUT.json]
"""
import json, os, pathlib, statistics, subprocess, sys, time

repo = pathlib.Path(__file__).resolve().parents[2]
target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/sqlplan-target"))
sqlplan = sys.argv[1] if len(sys.argv) > 1 else f"{target}/debug/sqlplan"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
out = sys.argv[3] if len(sys.argv) > 3 else None

proc = subprocess.Popen([sqlplan, "lsp"], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)

def send(msg):
    body = json.dumps(msg).encode()
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    proc.stdin.flush()

def receive():
    length = 0
    while True:
        line = proc.stdout.readline().decode().strip()
        if not line:
            break
        if line.startswith("Content-Length: "):
            length = int(line.split(": ")[1])
    return json.loads(proc.stdout.read(length))

def diagnostics(uri):
    while True:
        m = receive()
        if m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri:
            return m["params"]["diagnostics"]

template = repo / "sql/summary/existing.sql"
uri = template.resolve().as_uri()
original = template.read_text()
broken = original.replace("SELECT", "SELECT no_such_column,", 1)
send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}, "processId": None}})
receive()
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
start = time.perf_counter()
send({"jsonrpc": "2.0", "method": "textDocument/didOpen",
      "params": {"textDocument": {"uri": uri, "languageId": "sql", "version": 1, "text": original}}})
# The first change plans from a cold server (the warehouse observed once).
times = []
for i in range(n + 1):
    text = broken if i % 2 == 0 else original
    t0 = time.perf_counter()
    send({"jsonrpc": "2.0", "method": "textDocument/didChange",
          "params": {"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [{"text": text}]}})
    got = diagnostics(uri)
    times.append(time.perf_counter() - t0)
    assert (len(got) == 1) == (text is broken), got
send({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
send({"jsonrpc": "2.0", "method": "exit"})
proc.wait(timeout=30)
first, rest = times[0], times[1:]
report = {"pipeline": "pipelines/summary.yaml", "changes": n, "first_ms": round(first * 1e3, 1),
          "min_ms": round(min(rest) * 1e3, 1), "median_ms": round(statistics.median(rest) * 1e3, 1),
          "max_ms": round(max(rest) * 1e3, 1)}
print(json.dumps(report))
if out:
    json.dump(report, open(out, "w"), indent=2)
