"""The FUSE adapter, and the only code that knows pyfuse3: `ops` serves the
kernel's requests over the snapshots' layer model (fusesnap.snapshots.layers),
`mount` mounts and serves, `stats` counts the requests."""
