"""Leases and garbage collection (spec §4, §8)."""
