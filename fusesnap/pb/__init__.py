"""Protobuf and gRPC modules generated from protos/ by `make proto` and committed."""
