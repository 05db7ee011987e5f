//! Unit tests: each pattern on a small hand-built graph, and the passes end to end through the test host.
