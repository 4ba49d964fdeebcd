"""ONNX conversion pipeline: steps that report progress through a callback.

Nothing here knows about gRPC or the database. `pipeline.run` converts one source model
into the requested targets and verifies each output numerically against the source;
`sandbox` runs that pipeline in a separate, resource-limited process.
"""
