"""The layered object model behind every snapshot: the snapshotter's driver.

Every filesystem object has a global id (`oid`). A layer may hold a *version*
of an object (row in `inodes`) and *entries* (rows in `dentries`) keyed by the
oid of the directory they live in. A snapshot's view is its own layer over the
chain of committed layers below it: the effective version of an object, and
the effective entry for a (directory, name), come from the topmost layer of
the chain that has one. Consequences that make the semantics cheap:

* a lookup is one indexed probe of (dir, name), whatever the chain depth;
* a directory renamed in an upper layer keeps its oid, so the entries lower
  layers hold for it follow it: no EXDEV, no redirects;
* a directory removed and created again gets a new oid, so nothing of the old
  one shows through: opacity needs no marker;
* hard links share an oid, so a copy-up is seen through every link;
* an entry of oid 0 is a whiteout.

Regular file bytes live in `<layers>/<layer>/<oid>` (files.py). Owners, modes,
device numbers and xattrs are rows, which is how a rootless daemon records
what the host would refuse it.

By concern: `rows` (the SQL of the three tables, rows written behind),
`views` (a snapshot's merged view and its bounded caches), `tree` (the
namespace rules, and the entry point), `files` (open files, data, copy-up),
`data` (reads and writes over a partial copy-up's chain), `recovery` (after
an unclean stop). Nothing here knows FUSE: `fusesnap.layerfs` adapts it.
"""

from fusesnap.snapshots.layers.files import OpenFile
from fusesnap.snapshots.layers.rows import NAME_MAX, ROOT_OID, WHITEOUT, Attr, fs_error, now_ns
from fusesnap.snapshots.layers.tree import LayerTree
from fusesnap.snapshots.layers.views import View

__all__ = ["NAME_MAX", "ROOT_OID", "WHITEOUT", "Attr", "LayerTree", "OpenFile", "View",
           "fs_error", "now_ns"]
