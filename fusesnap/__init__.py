"""fusesnap: a userspace snapshotter and content store for containers."""

__version__ = "0.1.0"
