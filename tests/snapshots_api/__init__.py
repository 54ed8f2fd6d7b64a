"""The gRPC contract of containerd.services.snapshots.v1.Snapshots (spec §2), RPC by RPC.

Every test talks to a real daemon over its unix socket and looks at the real
FUSE mount. Most tests share one daemon (the `d` fixture of conftest.py, one
for the package) and keep to keys with a prefix of their own (the `k`
fixture), so they stay fast; the few that need to see *every* snapshot (List
without filters, batching, huge requests) start their own (`new_daemon`).
`helpers.py` holds the one-line RPC wrappers and the snapshot makers.
"""
