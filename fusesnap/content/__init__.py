"""The content store: blobs addressed by digest, resumable ingests (spec §3).

Digests themselves are fusesnap.digests."""
