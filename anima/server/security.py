"""The server's trust boundary: request limits, names that stay inside their folders, API-key auth.

Everything a client sends is checked here before it reaches the queue: a request that passes
costs at most what `Limits` allows, and a name (model, LoRA, output folder, file to serve) can
only ever point inside the folder configured for it, symlinks included.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from anima.errors import AnimaError
from anima.workflows.hires import plan_passes

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Defaults suit one consumer GPU; `anima serve` flags change them."""

    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    max_steps: int = 150
    max_batch: int = 8
    max_n_iter: int = 16
    max_prompt_chars: int = 10_000
    max_upload_bytes: int = 32 * 1024 * 1024  # one decoded image
    max_upload_pixels: int = 4096 * 4096  # refuses decompression bombs before decoding
    max_queued: int = 1000
    max_body_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise AnimaError(f"server limit {key} must be a positive integer, got {value!r}")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def check_recipe(self, recipe, n_iter: int = 1) -> None:
        """Raise `AnimaError` naming the first limit `recipe` (run `n_iter` times) exceeds; a hires
        fix is checked at its final size."""
        hires = recipe.hires
        if hires.on:
            w, h = plan_passes(
                recipe.width, recipe.height, hires.scale, max_step=hires.max_step, max_side=hires.max_side
            ).final
            if hires.steps > self.max_steps:
                raise AnimaError(f"hires steps {hires.steps} is over this server's limit of {self.max_steps}")
            if max(w, h) > self.max_side or w * h > self.max_pixels:
                raise AnimaError(f"hires fix to {w}x{h} is over this server's size limits")
        for what, value in (("width", recipe.width), ("height", recipe.height)):
            if value > self.max_side:
                raise AnimaError(f"{what} {value} is over this server's limit of {self.max_side}")
        if recipe.width * recipe.height > self.max_pixels:
            raise AnimaError(
                f"{recipe.width}x{recipe.height} is over this server's limit of {self.max_pixels} pixels"
            )
        if recipe.steps > self.max_steps:
            raise AnimaError(f"steps {recipe.steps} is over this server's limit of {self.max_steps}")
        if recipe.batch_size > self.max_batch:
            raise AnimaError(
                f"batch size {recipe.batch_size} is over this server's limit of {self.max_batch}"
            )
        if n_iter > self.max_n_iter:
            raise AnimaError(f"n_iter {n_iter} is over this server's limit of {self.max_n_iter}")
        for what, text in (("prompt", recipe.prompt), ("negative prompt", recipe.negative_prompt)):
            if len(text) > self.max_prompt_chars:
                raise AnimaError(
                    f"{what} has {len(text)} characters; this server's limit is {self.max_prompt_chars}"
                )


# --------------------------------------------------------------------- names inside folders
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_name(name: str, what: str) -> PurePosixPath:
    """A relative, '/'-separated name with no '..', no absolute or drive prefix, no NUL or backslash."""
    if not isinstance(name, str) or not name.strip():
        raise AnimaError(f"{what} name is empty")
    if "\x00" in name or "\\" in name or _DRIVE.match(name) or PureWindowsPath(name).is_absolute():
        raise AnimaError(f"{what} name {name!r} is not allowed (plain relative names only)")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in name.split("/")):
        raise AnimaError(f"{what} name {name!r} is not allowed (no absolute paths or '..')")
    return p


def resolve_inside(root: Path, name: str, what: str) -> Path:
    """`root/name` with symlinks resolved, refused unless it stays inside `root` (also resolved)."""
    rel = check_relative_name(name, what)
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise AnimaError(f"{what} name {name!r} points outside its folder")
    return target


def check_plain_name(name: str, what: str) -> str:
    """A single path component (a model or LoRA name): no separators at all."""
    check_relative_name(name, what)
    if "/" in name or name in (".", ".."):
        raise AnimaError(f"{what} name {name!r} is not allowed (a plain name, no folders)")
    return name


# --------------------------------------------------------------------- auth
class ApiKeyMiddleware:
    """Pure ASGI middleware: every HTTP/WebSocket request needs the key.

    Accepted forms: ``Authorization: Bearer KEY``, or HTTP basic auth (A1111's ``--api-auth``
    form) where the password is KEY; a KEY written as ``user:pass`` must match both parts.
    The 401 carries a Basic challenge so that a browser opening the web UI asks for it.
    """

    def __init__(self, app, api_key: str) -> None:
        if not api_key:
            raise AnimaError("the API key is empty")
        self.app = app
        self._key = api_key.encode()

    def _allowed(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(b" ")
        value = value.strip()
        if scheme.lower() == b"bearer":
            return hmac.compare_digest(value, self._key)
        if scheme.lower() == b"basic":
            try:
                pair = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, _, password = pair.partition(b":")
            if b":" in self._key:
                return hmac.compare_digest(pair, self._key)
            return hmac.compare_digest(password, self._key)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self._allowed(headers.get(b"authorization")):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        body = json.dumps({"detail": "missing or wrong API key (Authorization: Bearer KEY)"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Basic realm="anima"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413 before reading them.

    Bodies must declare their length: a chunked upload (no Content-Length) gets 411, so the check
    never depends on reading an unbounded stream (the HTTP parser holds the body to its length).
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return await _reply(send, 411, "send the request body with a Content-Length header")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _reply(send, 413, f"request body is over this server's limit of {self.limit} bytes")
        return await self.app(scope, receive, send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Listening beyond loopback needs a key (or an explicit --insecure)."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return
    if not api_key and not insecure:
        raise AnimaError(
            f"refusing to listen on {host} without --api-key KEY "
            "(anyone on the network could use the GPU and read outputs); pass --insecure to allow it"
        )
