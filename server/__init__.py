"""The gRPC server: servicers translating protobuf <-> domain, interceptors, CLI."""
