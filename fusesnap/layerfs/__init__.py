"""The FUSE filesystem of snapshots: `tree` is the layered object model (no
pyfuse3 inside), `ops` the pyfuse3.Operations adapter over it."""
