"""Leases (spec §4); the garbage collector that honours them is fusesnap.gc (§8)."""
