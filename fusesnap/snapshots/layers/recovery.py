"""Recovery of an active snapshot's layer after an unclean stop."""

from __future__ import annotations

import os
from pathlib import Path

from fusesnap.snapshots.layers.rows import Rows


def recover_layer(rows: Rows, layer_dir: Path, layer: int) -> None:
    """Take file sizes from the backing files (writes are recorded lazily),
    drop objects whose last link went while open, and delete data files no
    row refers to (staging files of an interrupted apply among them)."""
    layer_dir.mkdir(exist_ok=True)
    with rows.db.transaction():
        rows.drop_unlinked(layer)
        own = rows.own_data(layer)
        for entry in os.scandir(layer_dir):
            oid = int(entry.name) if entry.name.isdigit() else None
            if oid is None or oid not in own:
                os.unlink(entry.path)
                continue
            st = entry.stat(follow_symlinks=False)
            size, mtime = own[oid]
            if st.st_size != size or st.st_mtime_ns > mtime:
                rows.set_size(oid, layer, st.st_size, st.st_mtime_ns)
