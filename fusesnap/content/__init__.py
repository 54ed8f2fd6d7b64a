"""The content store: blobs addressed by digest, resumable ingests, digests (spec §3)."""
