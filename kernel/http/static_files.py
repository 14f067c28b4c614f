"""Static files: safe paths, content types, ETag and Last-Modified."""

from __future__ import annotations

import email.utils
import mimetypes
from pathlib import Path

from kernel.core.errors import MethodNotAllowed, NotFound

_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".woff2": "font/woff2", ".woff": "font/woff", ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json", ".map": "application/json",
}

#: The policy of every static page (docs/protocol.md section 8).
STATIC_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
              "form-action 'self'; frame-ancestors 'none'")


class StaticFiles:
    """Serves files from ``(prefix, directory)`` mounts, longest prefix first.

    A path is refused (404) when any segment is empty-dot, ``..``, holds a
    backslash or a NUL, or when the resolved file (symlinks followed) is not
    inside its mount's directory.
    """

    def __init__(self, mounts: list[tuple[str, str | Path]]):
        self.mounts = sorted(((p.rstrip("/"), Path(d).resolve()) for p, d in mounts),
                             key=lambda m: len(m[0]), reverse=True)

    def find(self, path: str) -> Path | None:
        """Return the file a URL path names, or None."""
        for prefix, root in self.mounts:
            if prefix and path != prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix):].lstrip("/")
            segments = rest.split("/") if rest else []
            if any(s in (".", "..") or "\\" in s or "\x00" in s for s in segments):
                return None
            candidate = (root / Path(*segments)) if segments else root
            try:
                resolved = candidate.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if resolved != root and root not in resolved.parents:
                continue
            if resolved.is_dir():
                if segments and not path.endswith("/"):
                    continue  # the UI is served at '/', folders need their slash
                resolved = resolved / "index.html"
                if not resolved.is_file():
                    continue
            if resolved.is_file():
                return resolved
        return None

    def __call__(self, req, resp, **_params) -> None:
        """Falcon sink: serve GET and HEAD."""
        if req.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(["GET", "HEAD"])
        found = self.find(req.path)
        if found is None:
            raise NotFound(f"no such resource: {req.path}")
        req.context.call.static = True
        stat = found.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        resp.set_header("ETag", etag)
        resp.set_header("Last-Modified", last_modified)
        resp.set_header("Cache-Control", "no-cache")
        if _not_modified(req, etag, stat.st_mtime):
            resp.status = 304
            return
        resp.content_type = _TYPES.get(found.suffix.lower()) or mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        resp.status = 200
        if req.method == "HEAD":
            resp.content_length = stat.st_size
            return
        resp.data = found.read_bytes()


def _not_modified(req, etag: str, mtime: float) -> bool:
    inm = req.get_header("If-None-Match")
    if inm is not None:
        return etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
    ims = req.get_header("If-Modified-Since")
    if ims:
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return int(mtime) <= since
    return False


__all__ = ["StaticFiles", "STATIC_CSP"]
