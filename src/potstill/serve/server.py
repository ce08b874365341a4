"""`serve`: load a model, bind the socket, run uvicorn until Ctrl-C.

Safe by default: it listens on 127.0.0.1 (another ``host`` is allowed, with a warning),
reads the optional API key from an environment variable (never from the command line,
where ``ps`` and shell history would show it) and never logs it, and runs no code from
the model folder unless ``trust_remote_code``.
"""

from __future__ import annotations

import ipaddress
import socket

from potstill.generation.engine import Engine
from potstill.models.load import load_causal_lm
from potstill.serve.app import create_app
from potstill.util.device import resolve_device
from potstill.util.errors import PotstillError
from potstill.util.log import log, logger
from potstill.util.secrets import env_secret

GRACEFUL_SHUTDOWN_S = 3  # Ctrl-C waits this long for open requests, then drops them


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("192.168.1.7")
    (False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(env_name: str | None) -> str | None:
    """The API key from the environment variable ``env_name``; None without one."""
    return env_secret(
        env_name, setting=f"--api-key-env {env_name}", fix=" first, or leave out --api-key-env"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        reason = e.strerror or str(e)
        raise PotstillError(
            f"cannot listen on {host}:{port} ({reason}); pass another --port or --host"
        ) from e
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    device: str = "auto",
    trust_remote_code: bool = False,
) -> None:
    """Serve ``model`` (any reference `load_causal_lm` takes) until interrupted."""
    import uvicorn

    if max_batch < 1 or max_queue < 1:
        raise PotstillError("--max-batch and --max-queue must be at least 1")
    api_key = read_api_key(api_key_env)
    if not is_loopback(host):
        logger.warning(
            f"warning: serving on {host}, which other machines can reach"
            + ("" if api_key else "; anyone who can connect can use the model (see --api-key-env)")
        )
    target = resolve_device(device)
    sock = bind(host, port)
    try:
        lm, tokenizer = load_causal_lm(model, trust_remote_code=trust_remote_code, log=log)
        engine = Engine(lm.to(target), tokenizer, max_batch=max_batch, max_queue=max_queue)
        app = create_app(engine, model, api_key=api_key)
        config = uvicorn.Config(
            app, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
        )
        engine.start()
        log(
            f"serving {model} on {target} at {url_of(sock)}/v1"
            + (" (API key required)" if api_key else "")
            + "; Ctrl-C stops"
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C it handled: the normal way to stop
        finally:
            engine.close()
        log("stopped")
    finally:
        sock.close()
