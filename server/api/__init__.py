"""The gRPC edge: protobuf <-> domain conversion, servicers, interceptors and the server itself."""
