"""The Open Inference Protocol (KServe v2, Triton's protocol): REST routes in routes.py; the parts that
REST and gRPC (service/grpc/) share are protocol-neutral: models.py, tensors.py, inference.py, server.py."""
