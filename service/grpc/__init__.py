"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (KServe v2 / Triton).

grpc_predict_v2.proto is KServe's definition, unchanged; the *_pb2* modules beside it are generated from it
by `python -m service.grpc.generate` (grpcio-tools; see that file) and committed. server.py serves it.
"""
