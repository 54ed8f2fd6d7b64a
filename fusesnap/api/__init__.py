"""gRPC servicers: protobuf <-> core calls, and core errors -> status codes."""
