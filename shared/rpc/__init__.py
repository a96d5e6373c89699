"""gRPC for the cosmo wire contract (``protos/cosmo/v1``), loadable from protobuf 3.19 + grpcio 1.48 on
Python 3.6 (Jetson TX2) to protobuf 7 + the newest grpcio.

No generated ``*_pb2.py``: ``_descriptors.py`` holds the compiled FileDescriptorSet
(``python scripts/gen_protos.py`` rewrites it; ``--check`` fails on drift) and ``runtime`` builds the
message classes, stubs and handlers from it on first use. Names mirror grpc's gencode::

    from shared.rpc import pb, ModelRegistryStub, add_ModelRegistryServicer_to_server

    stub = ModelRegistryStub(channel)
    reply = stub.ListModels(pb.ListModelsRequest(name="cosmo"), timeout=5)
    for chunk in stub.Download(pb.DownloadRequest(name="cosmo", version=3, file="encoders.onnx")):
        ...
    add_ModelRegistryServicer_to_server(MyRegistry(), server)  # methods ListModels(request, context), ...

Any service in the set works through the generic helpers, whatever its streaming kinds:
``Stub(channel, "cosmo.v1.Inference")``, ``add_servicer_to_server("Inference", servicer, server)``.
"""
import logging
from typing import Any

import grpc

from shared.rpc._descriptors import SERVICE_NAMES
from shared.rpc.runtime import (
    Contract,
    Method,
    Stub,
    add_health,
    add_servicer_to_server,
    contract,
    descriptor_pool,
    enable_reflection,
    message_class,
    method_handlers,
    methods,
    pb,
    stub_factory,
)


def refusal_log_level(code: grpc.StatusCode) -> int:
    """How loud both daemons log a call they refused with ``code`` (one line each). States that are not
    mistakes (busy; no model yet; not published yet) at DEBUG: a client polling or a fleet under load makes
    one per call, daemons log INFO by default, and ``grpc_server_handled_total{grpc_code}`` counts them. A
    client's mistake at WARNING."""
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return logging.DEBUG
    return logging.WARNING


__all__ = [
    "refusal_log_level",
    "SERVICE_NAMES", "Contract", "Method", "contract", "Stub", "add_health", "add_servicer_to_server", "descriptor_pool",
    "enable_reflection", "message_class", "method_handlers", "methods", "pb", "stub_factory",
    "ModelRegistryStub", "TrainingStub", "add_ModelRegistryServicer_to_server", "add_TrainingServicer_to_server",
    "InferenceStub", "add_InferenceServicer_to_server",
]


def ModelRegistryStub(channel: grpc.Channel) -> Stub:
    """Client of ``cosmo.v1.ModelRegistry``: ListModels, GetManifest, Download (stream), WatchModels
    (stream), ReportMetrics; plus ``DownloadRaw``, the same RPC yielding each Chunk's serialized bytes
    (``shared.rpc.chunks.decode_chunk`` reads them without copying the data)."""
    stub = Stub(channel, "cosmo.v1.ModelRegistry")
    stub.DownloadRaw = channel.unary_stream(  # type: ignore[attr-defined]
        "/cosmo.v1.ModelRegistry/Download", request_serializer=pb.DownloadRequest.SerializeToString,
        response_deserializer=None)
    return stub


def TrainingStub(channel: grpc.Channel) -> Stub:
    """Client of ``cosmo.v1.Training``: SubmitJob, GetJob, WatchJob (stream), CancelJob."""
    return Stub(channel, "cosmo.v1.Training")


def add_ModelRegistryServicer_to_server(servicer: Any, server: Any) -> None:
    """Serve ``cosmo.v1.ModelRegistry`` with ``servicer`` (methods named like the RPCs)."""
    add_servicer_to_server("cosmo.v1.ModelRegistry", servicer, server)


def add_TrainingServicer_to_server(servicer: Any, server: Any) -> None:
    """Serve ``cosmo.v1.Training`` with ``servicer`` (methods named like the RPCs)."""
    add_servicer_to_server("cosmo.v1.Training", servicer, server)


def InferenceStub(channel: grpc.Channel) -> Stub:
    """Client of ``cosmo.v1.Inference`` (edge): Predict, Embed, StreamPredict (bidi stream), Info, Search."""
    return Stub(channel, "cosmo.v1.Inference")


def add_InferenceServicer_to_server(servicer: Any, server: Any) -> None:
    """Serve ``cosmo.v1.Inference`` with ``servicer`` (methods named like the RPCs)."""
    add_servicer_to_server("cosmo.v1.Inference", servicer, server)
