"""Business rules of the registry: plain Python, no gRPC."""
