"""containerd's request headers (spec §1.3) and the daemon's role.

``containerd-namespace`` names the namespace of leases and images;
``containerd-lease`` the lease that objects created by the request join. In
the proxy role (containerd is the client and owns leases and collection) the
lease header is ignored, and no namespace is ever required of Snapshots or
Content calls.
"""

from __future__ import annotations

import grpc

from fusesnap import namespaces
from fusesnap.config import Role
from fusesnap.leases.store import Holder

NAMESPACE = "containerd-namespace"
LEASE = "containerd-lease"


def first(context: grpc.ServicerContext, key: str) -> str:
    """The first value of metadata `key`, or ""."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return ""


def namespace(context: grpc.ServicerContext) -> str:
    """The request's namespace: FailedPrecondition when missing, InvalidArgument
    when malformed."""
    return namespaces.validate(first(context, NAMESPACE))


class Headers:
    def __init__(self, role: Role) -> None:
        self.role = role

    def holder(self, context: grpc.ServicerContext, snapshotter: str = "") -> Holder | None:
        """The lease objects created by this request join, if any (direct role only)."""
        if self.role is Role.PROXY:
            return None
        lease = first(context, LEASE)
        if not lease:
            return None
        return Holder(namespace(context), lease, snapshotter)
