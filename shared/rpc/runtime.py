"""Message classes, stubs and servicer registration built at run time from the checked-in descriptor set.

Works on every protobuf runtime from 3.19 (Python 3.6, the Jetson TX2 stack; C++ or pure Python) to 7
(upb), and grpcio from 1.48: nothing here depends on the gencode API of one protobuf release.

* The descriptor pool is private to this module and built on first use (thread-safe, cached), so
  importing ``shared.rpc`` costs nothing and cannot clash with other files in the default pool.
* Message classes come from the runtime's own factory: ``message_factory.GetMessageClass`` (protobuf
  >= 4.22) or ``MessageFactory(pool).GetPrototype`` (3.19, 3.20).
* Services are read from the ``FileDescriptorProto`` itself (method names, types and streaming flags;
  protobuf 3.19's ``MethodDescriptor`` has no ``client_streaming``), so stubs and handlers exist for
  every service and every streaming kind without a hand-written list.
"""
import functools
import inspect
import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import grpc
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf import descriptor_pool as _descriptor_pool
from google.protobuf.internal import enum_type_wrapper

from shared.rpc._descriptors import DESCRIPTOR_SET, SERVICE_NAMES

log = logging.getLogger("shared.rpc")
# (client_streaming, server_streaming) -> (grpc.Channel method, grpc handler factory)
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}
# files whose messages are not part of ``pb`` (imports such as google/protobuf/timestamp.proto)
_NOT_OURS = ("google/protobuf/",)


class Method(object):
    """One RPC of a service: ``path`` is the wire name ``/package.Service/Name``."""

    __slots__ = ("name", "path", "request", "response", "client_streaming", "server_streaming")

    def __init__(self, name: str, path: str, request: Any, response: Any, client_streaming: bool,
                 server_streaming: bool) -> None:
        self.name = name
        self.path = path
        self.request = request  # message class
        self.response = response  # message class
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming

    @property
    def kind(self) -> str:
        """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``."""
        return _KINDS[(self.client_streaming, self.server_streaming)][0]

    def __repr__(self) -> str:
        return "Method(%s, %s)" % (self.path, self.kind)


class Contract(object):
    """A compiled set of ``.proto`` files: its private pool, message classes by full name, ``pb``'s symbols
    by short name and services by full name. ``contract()`` is the cosmo one; tests build others from their
    own descriptor sets."""

    def __init__(self, data: bytes) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
        self.pool = _descriptor_pool.DescriptorPool()
        for f in fds.file:  # protoc writes imports before the files that import them
            self.pool.AddSerializedFile(f.SerializeToString())
        self._factory = None  # type: Any
        self._classes = {}  # type: Dict[str, Any]
        self.symbols = {}  # type: Dict[str, Any]
        self.services = {}  # type: Dict[str, List[Method]]
        for f in fds.file:
            if f.name.startswith(_NOT_OURS):
                continue
            prefix = f.package + "." if f.package else ""
            for m in f.message_type:
                self._add_symbol(m.name, self.message_class(prefix + m.name), f.name)
            for e in f.enum_type:
                wrapper = enum_type_wrapper.EnumTypeWrapper(self.pool.FindEnumTypeByName(prefix + e.name))
                self._add_symbol(e.name, wrapper, f.name)
                for v in e.value:  # like gencode: file-level enum values are module constants
                    self._add_symbol(v.name, v.number, f.name)
            for s in f.service:
                self.services[prefix + s.name] = [
                    Method(m.name, "/%s%s/%s" % (prefix, s.name, m.name),
                           self.message_class(m.input_type.lstrip(".")),
                           self.message_class(m.output_type.lstrip(".")),
                           bool(m.client_streaming), bool(m.server_streaming))
                    for m in s.method]

    def _add_symbol(self, name: str, value: Any, filename: str) -> None:
        if name in self.symbols:
            raise RuntimeError("shared.rpc.pb: two definitions of %r (the second in %s); rename one in "
                               "protos/ (pb exposes top-level names of every file)" % (name, filename))
        self.symbols[name] = value

    def message_class(self, full_name: str) -> Any:
        """The class of message ``full_name`` (``cosmo.v1.Chunk``), nested types attached as attributes."""
        cls = self._classes.get(full_name)
        if cls is None:
            desc = self.pool.FindMessageTypeByName(full_name)
            get_class = getattr(message_factory, "GetMessageClass", None)
            if get_class is not None:
                cls = get_class(desc)
            else:  # protobuf 3.19 / 3.20
                if self._factory is None:
                    self._factory = message_factory.MessageFactory(self.pool)
                cls = self._factory.GetPrototype(desc)
            self._classes[full_name] = cls
            for nested in desc.nested_types:  # the C++ and pure-Python runtimes do not attach them
                if nested.GetOptions().map_entry:
                    continue
                nested_cls = self.message_class(nested.full_name)
                if getattr(cls, nested.name, None) is not nested_cls:
                    setattr(cls, nested.name, nested_cls)
        return cls

    def service(self, name: str) -> Tuple[str, List[Method]]:
        """``(full name, methods)`` of service ``name``, full (``cosmo.v1.Training``) or short (``Training``)."""
        if name in self.services:
            return name, self.services[name]
        full = [s for s in self.services if s.rsplit(".", 1)[-1] == name]
        if len(full) == 1:
            return full[0], self.services[full[0]]
        raise KeyError("no service %r in the descriptor set (%s)%s" % (
            name, ", ".join(sorted(self.services)), "; ambiguous short name" if full else ""))


_lock = threading.Lock()
_contract = None  # type: Optional[Contract]


def contract() -> Contract:
    """The cosmo contract (``_descriptors.DESCRIPTOR_SET``), built on the first call and cached."""
    global _contract
    if _contract is None:
        with _lock:
            if _contract is None:
                _contract = Contract(DESCRIPTOR_SET)
    return _contract


def _get(c: Optional[Contract] = None) -> Contract:
    return contract() if c is None else c


def descriptor_pool() -> Any:
    """The private ``DescriptorPool`` holding the cosmo files and their imports (built on first use)."""
    return _get().pool


def message_class(full_name: str) -> Any:
    """The message class of ``full_name``, e.g. ``message_class("cosmo.v1.Chunk")``."""
    return _get().message_class(full_name)


def methods(service: str, contract: Optional[Contract] = None) -> List[Method]:
    """The RPCs of ``service`` (full or short name) in declaration order."""
    return list(_get(contract).service(service)[1])


class _Messages(object):
    """``pb.Chunk``, ``pb.Job.SUCCEEDED``, ...: the top-level messages and enums of the contract by short
    name. The first attribute access builds the pool; each name is cached on the instance after that."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = _get().symbols[name]
        except KeyError:
            raise AttributeError("shared.rpc.pb has no message or enum %r (see dir(pb))" % name) from None
        setattr(self, name, value)
        return value

    def __dir__(self) -> List[str]:
        return sorted(_get().symbols)

    def __repr__(self) -> str:
        return "<shared.rpc.pb: messages of %s>" % ", ".join(SERVICE_NAMES)


pb = _Messages()


class Stub(object):
    """Client of one service: one callable attribute per RPC, as grpc's generated ``*Stub`` classes have.

    ``Stub(channel, "cosmo.v1.ModelRegistry").ListModels(request, timeout=5)``; server-streaming RPCs return
    an iterator of responses, client-streaming ones take an iterator of requests.
    """

    def __init__(self, channel: grpc.Channel, service: str, contract: Optional[Contract] = None) -> None:
        full, rpcs = _get(contract).service(service)
        self._service = full
        for m in rpcs:
            make = getattr(channel, m.kind)
            setattr(self, m.name, make(m.path, request_serializer=m.request.SerializeToString,
                                       response_deserializer=m.response.FromString))

    def __repr__(self) -> str:
        return "<Stub %s>" % self._service


class Malformed(object):
    """What a server gets instead of a request whose bytes do not parse as its message type (garbage on
    the wire). Unary-request handlers never see it: ``method_handlers`` answers INVALID_ARGUMENT for them
    (grpc itself would answer UNKNOWN and log a traceback per request); a client-streaming handler meets
    it among the messages of its request iterator and refuses it the same way."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(cls: Any) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as e:  # DecodeError (and RuntimeWarning-free variants of old runtimes)
            return Malformed("request is not a valid {} message ({})".format(name, str(e).rsplit(": ", 1)[-1]))
    return parse


def _guard(fn: Callable[..., Any], path: str) -> Callable[..., Any]:
    """``fn`` (a unary-request handler: plain, generator, coroutine or async generator) answering
    INVALID_ARGUMENT for a ``Malformed`` request, with one WARNING line."""
    def refuse(request: Any, context: Any) -> bool:
        if not isinstance(request, Malformed):
            return False
        log.warning("%s from %s: INVALID_ARGUMENT %s", path, context.peer(), request.message)
        return True
    if inspect.iscoroutinefunction(fn):
        async def coro(request: Any, context: Any) -> Any:
            if refuse(request, context):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await fn(request, context)
        return functools.wraps(fn)(coro)
    if inspect.isasyncgenfunction(fn):
        async def agen(request: Any, context: Any) -> Any:
            if refuse(request, context):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for r in fn(request, context):
                yield r
        return functools.wraps(fn)(agen)

    def plain(request: Any, context: Any) -> Any:
        if refuse(request, context):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return fn(request, context)
    return functools.wraps(fn)(plain)


def method_handlers(service: str, servicer: Any,
                    contract: Optional[Contract] = None) -> Dict[str, grpc.RpcMethodHandler]:
    """grpc method handlers for the RPCs ``servicer`` implements, by RPC name.

    A servicer method is named like its RPC and has grpc's signature: ``ListModels(request, context)``
    (unary request) or ``Upload(request_iterator, context)`` (client-streaming); server-streaming ones
    return or yield an iterator of responses. A response may also be its serialized ``bytes``.
    """
    out = {}
    for m in _get(contract).service(service)[1]:
        fn = getattr(servicer, m.name, None)
        if callable(fn):
            make = _KINDS[(m.client_streaming, m.server_streaming)][1]
            handler = fn if m.client_streaming else _guard(fn, m.path)
            out[m.name] = make(handler, request_deserializer=_tolerant(m.request), response_serializer=_serialize)
    return out


def _serialize(response: Any) -> bytes:
    """A response message's wire bytes; ``bytes`` pass through, so a servicer may send a message it encoded
    itself (the cloud's Download wraps file chunks that way instead of copying them through a message)."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def add_servicer_to_server(service: str, servicer: Any, server: Any, contract: Optional[Contract] = None) -> None:
    """Register ``servicer`` for ``service`` on a ``grpc.Server`` (or ``grpc.aio.Server``).

    RPCs the servicer has no method for answer UNIMPLEMENTED, as with generated base servicers. A servicer
    that implements none of them is a mistake (a misspelt service?) and raises ``ValueError``.
    """
    full, rpcs = _get(contract).service(service)
    handlers = method_handlers(full, servicer, contract)
    if not handlers:
        raise ValueError("%s implements no RPC of %s (expected methods named %s)" % (
            type(servicer).__name__, full, ", ".join(m.name for m in rpcs)))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(full, handlers),))
    # grpcio >= 1.62 looks registered methods up without the generic-handler scan; gencode does both
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(full, handlers)


class _ReflectionPool(object):
    """Our pool first, then the default one (where grpc_health's and grpc_reflection's files live), so
    reflection clients (grpcurl) can describe every service the server lists. Only the lookups that
    grpc_reflection's servicer makes (1.48 .. 1.85)."""

    def __init__(self, *pools: Any) -> None:
        self._pools = pools

    def _first(self, method: str, *args: Any) -> Any:
        err = None  # type: Optional[Exception]
        for p in self._pools:
            try:
                return getattr(p, method)(*args)
            except KeyError as e:
                err = e
        assert err is not None
        raise err

    def FindFileByName(self, name: str) -> Any:
        return self._first("FindFileByName", name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        return self._first("FindFileContainingSymbol", symbol)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._first("FindMessageTypeByName", name)

    # extensions are looked up in the pool that holds the extended message
    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return message.file.pool.FindAllExtensions(message)


def enable_reflection(server: Any, services: Iterable[str] = SERVICE_NAMES,
                      extra_service_names: Iterable[str] = ()) -> Tuple[str, ...]:
    """Serve ``grpc.reflection.v1alpha`` on ``server`` for the cosmo ``services`` it serves (list exactly
    those), ``extra_service_names`` (e.g. ``grpc.health.v1.Health``) and reflection itself. Needs
    grpcio-reflection (1.48 or newer). Returns the service names it lists."""
    from google.protobuf import descriptor_pool as dp
    from grpc_reflection.v1alpha import reflection

    names = tuple(services) + tuple(extra_service_names) + (reflection.SERVICE_NAME,)
    reflection.enable_server_reflection(names, server, pool=_ReflectionPool(descriptor_pool(), dp.Default()))
    return names


def add_health(server: Any, service_names: Iterable[str] = SERVICE_NAMES, serving: bool = True) -> Any:
    """Add ``grpc.health.v1.Health`` to ``server`` with ``""`` (the whole server) and ``service_names``
    set to SERVING (or NOT_SERVING); returns the ``HealthServicer`` so the app can change them later.
    Needs grpcio-health-checking (1.48 or newer)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("",) + tuple(service_names):
        servicer.set(name, status)
    return servicer


def stub_factory(service: str, contract: Optional[Contract] = None) -> Callable[[grpc.Channel], Stub]:
    """``ModelRegistryStub``-style constructor for ``service``: ``InferenceStub = stub_factory("Inference")``."""

    def make(channel: grpc.Channel) -> Stub:
        return Stub(channel, service, contract)

    make.__name__ = service.rsplit(".", 1)[-1] + "Stub"
    return make
