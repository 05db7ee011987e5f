"""Prints the executable cargo built for target TARGET, read from cargo's JSON messages on stdin
(`cargo test/bench --no-run --message-format=json-render-diagnostics | python3 scripts/cargo-executable.py TARGET`)."""
import json
import sys

target = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == target:
        print(m["executable"])
