"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import Signer
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.db import POOL_SIZE, REQUEST_WAIT_S, Database
from app.deps import LoginRequired
from app.routes.api import api_router
from app.routes.pages import pages_router
from app.services.errors import ServiceError
from app.services.webhook_delivery import DeliveryThread
from app.templating import render

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Defence in depth against XSS: scripts only from /static (no inline script, no inline event
# handlers, no eval), nothing embeds the app, forms post only to it. Inline style attributes
# stay allowed (progress bars set their width).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """Adds the security headers to every HTTP response.

    A plain ASGI middleware: ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware)
    runs each request through an extra task and memory stream, which cost several per cent
    of the server's CPU under load (docs/benchmarks.md, "Load").
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = not scope["path"].startswith(DOCS_PATHS)  # Swagger UI needs its CDN and inline script

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                if csp:
                    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ConnectionGate:
    """At most ``limit`` requests of this process work at once; the rest wait here, in the
    event loop, for at most ``wait_s`` seconds, then get 503 with Retry-After.

    Without it a burst (200 labelers opening their page at the same moment) checked out
    one pooled connection per request in the dependencies, then queued for a worker
    thread while holding it, and after POOL_TIMEOUT_S of an exhausted pool answered 503
    (docs/benchmarks.md). Queued here a request holds nothing. ``limit`` is the pool's
    size (app/db.py), so a request that gets through always finds a connection. Static
    files pass freely.
    """

    def __init__(self, app: ASGIApp, limit: int, wait_s: float) -> None:
        self.app = app
        self.limit = limit
        self.wait_s = wait_s
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._loop is not loop:  # a test client runs its own loop
            self._sem, self._loop = asyncio.Semaphore(self.limit), loop
        return self._sem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        sem = self._semaphore()
        try:
            await asyncio.wait_for(sem.acquire(), self.wait_s)
        except TimeoutError:
            log.warning("request waited %.0f s for a free database connection", self.wait_s)
            response = JSONResponse(
                {"detail": "server busy: no database connection free; try again shortly"},
                status_code=503,
                headers={"Retry-After": "2"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            sem.release()


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = database or Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        # Sync routes and dependencies run in AnyIO's thread pool (40 threads by default),
        # each holding a pooled connection while it works: no more threads than the pool
        # keeps connections (see app/db.py).
        anyio.to_thread.current_default_thread_limiter().total_tokens = POOL_SIZE
        # The webhook outbox is sent from here, off every request (app/services/webhook_delivery.py).
        deliverer = DeliveryThread(db, settings).start() if settings.webhook_deliver else None
        yield
        if deliverer is not None:
            deliverer.stop()
        if database is None:
            db.dispose()

    app = FastAPI(
        title="rlhf-studio",
        version="0.1.0",
        description="Self-hosted RLHF workbench: labeling, exports, training rounds and policies.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.signer = Signer(settings.resolved_secret_key(), salt="rlhf-session")

    app.include_router(api_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={exc.next_url}", status_code=303)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        if _wants_html(request):
            return render(request, "error.html", status_code=exc.status_code, message=exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_html(request) and exc.status_code >= 400:
            return render(request, "error.html", status_code=exc.status_code, message=str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": errors, "message": summary}, status_code=422)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> Response:
        # A value the database cannot hold (SQLite raises OverflowError for ints past
        # 2**63 - 1; PostgreSQL a DataError for numbers past the column type, NUL in text):
        # bad input, not a crash.
        log.info("value out of range: %s", exc)
        message = (
            "a number in the request is out of range"
            if isinstance(exc, OverflowError)
            else "a value in the request cannot be stored (a number out of range or an invalid character)"
        )
        if _wants_html(request):
            return render(request, "error.html", status_code=422, message=message)
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database_down(request: Request, exc: Exception) -> Response:
        if isinstance(exc, DBAPIError) and not exc.connection_invalidated and not isinstance(
            exc, OperationalError
        ):
            log.exception("database error")
            return JSONResponse({"detail": "internal database error"}, status_code=500)
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(PoolTimeout)
    async def _database_busy(request: Request, exc: Exception) -> Response:
        # Every pooled connection stayed busy for POOL_TIMEOUT_S: overload, not a bug.
        log.warning("no database connection free: %s", exc)
        return JSONResponse(
            {"detail": "server busy: no database connection free; try again shortly"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    app.add_middleware(ConnectionGate, limit=POOL_SIZE, wait_s=REQUEST_WAIT_S)
    app.add_middleware(SecurityHeaders)

    return app
