"""The snapshotter core: containerd's Snapshots rules over layered directories."""

from fusesnap.snapshots.snapshotter import Mount, Snapshotter

__all__ = ["Mount", "Snapshotter"]
