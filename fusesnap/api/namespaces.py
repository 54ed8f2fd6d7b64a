"""The one Namespaces RPC that `ctr` calls at start-up (spec §9.6)."""

from __future__ import annotations

import grpc

from fusesnap.api.errors import rpc
from fusesnap.pb import namespaces_pb2, namespaces_pb2_grpc


class NamespacesServicer(namespaces_pb2_grpc.NamespacesServicer):
    @rpc
    def Get(self, request: namespaces_pb2.GetNamespaceRequest,
            context: grpc.ServicerContext) -> namespaces_pb2.GetNamespaceResponse:
        return namespaces_pb2.GetNamespaceResponse(
            namespace=namespaces_pb2.Namespace(name=request.name))
