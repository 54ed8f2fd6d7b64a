"""Image records: a name in a namespace pointing at a target descriptor (spec §5)."""
