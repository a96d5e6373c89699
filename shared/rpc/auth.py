"""Authentication of both daemons' gRPC servers: bearer tokens and TLS / mTLS credentials.

``TokenAuth`` (a ``grpc.aio`` server interceptor) requires ``authorization: Bearer <token>`` on every
call except health checks (probes must answer without secrets); reflection is behind the token too, as
it tells a caller what the daemon serves. The comparison is constant-time (``hmac.compare_digest``),
and a refused call is answered by the interceptor before any servicer runs, so it never takes a slot
of the daemon's limits from authenticated callers.

``server_credentials`` reads ``--tls-cert``/``--tls-key`` (TLS) and ``--tls-ca`` (mTLS: clients must
present a certificate it signed); ``is_loopback`` tells whether a listen address stays on the machine.
Runs on the edge (Python 3.6, grpcio 1.48) as in the cloud.
"""
import hmac
import ipaddress
from typing import Any, Awaitable, Callable, Optional, Sequence

import grpc

from ..errors import CosmoError

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # prefixes of methods that need no token


def _deny_handler(handler: Any, message: str) -> Any:
    """A handler of ``handler``'s streaming kind that answers UNAUTHENTICATED."""
    async def deny(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Requires the bearer ``token`` on every method but those starting with one of ``open_methods``."""

    def __init__(self, token: str, open_methods: Sequence[str] = OPEN_METHODS) -> None:
        if not token:
            raise CosmoError("the bearer token is empty")
        self.expected = ("Bearer " + token).encode()
        self.open_methods = tuple(open_methods)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open_methods):
            return handler
        got = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value
                break
        if isinstance(got, bytes):
            got = got.decode("latin-1")
        if hmac.compare_digest(str(got).encode("utf-8", "replace"), self.expected):
            return handler
        return _deny_handler(handler, "missing or wrong bearer token")


def read_file(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CosmoError("{} {}: {}".format(flag, path, e.strerror)) from None


def read_token(path: Optional[str], flag: str = "--token-file") -> Optional[str]:
    """The token in ``path`` (stripped), None without a path; ``CosmoError`` naming the flag when the file
    is missing or empty."""
    if not path:
        return None
    token = read_file(path, flag).decode("utf-8", "replace").strip()
    if not token:
        raise CosmoError("{} {}: the token file is empty".format(flag, path))
    return token


def server_credentials(cert: Optional[str], key: Optional[str], ca: Optional[str],
                       flag: str = "--tls") -> Optional[Any]:
    """TLS (cert + key) or mTLS (also ca: clients must present a certificate it signed); None for neither.
    ``flag``: the prefix of the flags named in errors (``--tls`` -> ``--tls-cert``, ``--tls-key``, ...)."""
    if not cert and not key:
        if ca:
            raise CosmoError("{0}-ca needs {0}-cert and {0}-key".format(flag))
        return None
    if not (cert and key):
        raise CosmoError("TLS needs both {0}-cert and {0}-key".format(flag))
    return grpc.ssl_server_credentials([(read_file(key, flag + "-key"), read_file(cert, flag + "-cert"))],
                                       root_certificates=read_file(ca, flag + "-ca") if ca else None,
                                       require_client_auth=bool(ca))


def check_exposure(listen: str, token: Optional[str], tls: Any, insecure: bool, token_flag: str = "--token-file",
                   tls_flag: str = "--tls-cert") -> None:
    """A listener other hosts can reach needs a token or TLS, unless the operator says ``--insecure``."""
    if not (token or tls or insecure or is_loopback(listen)):
        raise CosmoError("--listen {}: reachable from other hosts without {} or {}; add credentials "
                         "(docs/security.md) or --insecure on a trusted network".format(listen, token_flag, tls_flag))


def is_loopback(listen: str) -> bool:
    """Whether ``listen`` (``host:port``, ``[v6]:port``, ``unix:/path``) is reachable only from this machine."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or 0.0.0.0-like wildcard spelled otherwise): not provably local
        return False


__all__ = ["OPEN_METHODS", "TokenAuth", "check_exposure", "is_loopback", "read_file", "read_token",
           "server_credentials"]
