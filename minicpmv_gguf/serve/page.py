"""The chat page at GET /: an HTML file, its CSS and its JavaScript modules, shipped in `static/`.

No build step and no third-party code: the browser loads the files as they are. They are read on each
request (they are small), so an edited file shows on reload; `no-cache` makes the browser check too.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from .errors import error_body

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page talks to its own origin only and runs only its own files: an injected tag could not load or run.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": _CSP}


def mount_page(app: FastAPI, settings) -> None:
    """Serve `static/index.html` at `/` and the other files of `static/` at `/static/NAME`.

    The page itself needs no key (only `/v1/*` does). It takes nothing from `settings` yet: it learns the
    model and its modes from /v1/models, and that a key is needed from a 401.
    """

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return _file("index.html")

    @app.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(name: str):
        return _file(name)


def _file(name: str) -> Response:
    path = STATIC / name
    # A plain file name from the list of types: no "..", no folders, no hidden files.
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        return JSONResponse(error_body(f"no page file {name!r}", status=404), status_code=404)
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers=_HEADERS)
