"""The HTTP service: CDR list, streamed CSV export, KPIs and the Call Logs page.

Access control lives here and in the SQL: a key of one account gets that account forced into
its `CdrFilter` (so the WHERE clause of every query names it), and a filter naming another
account is refused with 403 before any query runs. Admin keys may name any account or none.

Bounds keep every request cheap and predictable: at most `max_days` (62, two months) between
``from`` and ``to``, pages of 1..1000 rows, text filters of at most 256 characters. Breaking one
is a 400 with a JSON body ``{"error": ..., "message": ...}``, as are malformed values (FastAPI's
own 422 is turned into 400 so that clients see one error shape).

Fairness: every query shares one store client, so each key is held to a request rate and a
number of requests running at once (`pipeline.api.limits`, 429 with Retry-After), and exports
read the store chunk by chunk behind short queries (`SharedStore.call_bulk`): one key's exports
cannot make every other tenant wait. ``/healthz`` does not touch the store at all.

Requests naming a host the service is not reached as get 400 (`pipeline.api.hosts`), and no
redirect is built from the Host header. The access log (`pipeline.api.access_log`) records
route templates, never query strings: those carry phone numbers, and keys sent by mistake.

With chDB the service must run in the process that owns the data directory: `create_app`
opens the store when the app starts (or uses a client it is given) and closes what it opened.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.api import page
from pipeline.api.access_log import AccessLogMiddleware
from pipeline.api.auth import KeyStore, Principal, default_keys_path
from pipeline.api.hosts import HostCheckMiddleware, parse_hosts
from pipeline.api.kpi import kpis
from pipeline.api.limits import KeyLimiter, KeyLimits, LimitExceeded, Slot
from pipeline.api.models import (
    CdrPage,
    ErrorBody,
    Health,
    KpiOut,
    Me,
    cdr_out,
    filter_out,
    kpi_out,
)
from pipeline.api.store_access import (
    CURSOR_MAX_LENGTH,
    SharedStore,
    csv_header,
    csv_lines,
    decode_cursor,
    encode_cursor,
    export_piece,
    export_start,
    page_cdrs,
)
from pipeline.config import environment
from pipeline.core.model import Flag
from pipeline.store.client import Client, StoreError, connect
from pipeline.store.queries import CdrFilter

__all__ = ["DEFAULT_EXPORT_CHUNK", "DEFAULT_MAX_DAYS", "ApiError", "create_app"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_DAYS = 62
DEFAULT_EXPORT_CHUNK = 2_500
MAX_PAGE = 1000
MAX_TEXT = 256
_TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC)

StoreSpec = str | Client | Callable[[], Client] | None


class ApiError(Exception):
    """An answer other than 2xx, with the JSON error body every endpoint uses."""

    def __init__(
        self, status: int, error: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


def _error(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, message=message).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid filter, range, page size or cursor"},
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    403: {"model": ErrorBody, "description": "filter names an account the key may not read"},
    429: {
        "model": ErrorBody,
        "description": "the key's request rate or running requests are over its limit;"
        " retry after Retry-After seconds",
    },
    503: {"model": ErrorBody, "description": "the CDR store failed or is unreachable"},
}

# The CSV route's default media type is text/csv; its errors are JSON all the same.
_CSV_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": spec["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, spec in _ERRORS.items()
}

# --- authentication ----------------------------------------------------------------------

_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (or send it as a Bearer token)"
)
_bearer = HTTPBearer(auto_error=False, description="API key as a Bearer token")


def _principal(
    request: Request,
    key: Annotated[str | None, Security(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    keys: KeyStore = request.app.state.keys
    token = key or (bearer.credentials if bearer is not None else None)
    principal = keys.authenticate(token)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or invalid API key: send it in the X-API-Key header"
            " or as Authorization: Bearer <key>",
            {"WWW-Authenticate": "Bearer"},
        )
    return principal


def _too_many(exc: LimitExceeded) -> ApiError:
    return ApiError(429, "too_many_requests", str(exc), {"Retry-After": str(exc.retry_after)})


def _slot(request: Request, principal: Principal) -> Slot:
    """A running-request slot of the key, or 429. Taken once a request is valid and about to
    query the store: refusals and cheap answers cost a key nothing."""
    limiter: KeyLimiter = request.app.state.limiter
    try:
        limiter.take(principal.key_id)
        return limiter.enter(principal.key_id)
    except LimitExceeded as exc:
        raise _too_many(exc) from None


PrincipalDep = Annotated[Principal, Depends(_principal)]

# --- filters -----------------------------------------------------------------------------

Direction = Literal["inbound", "outbound"]
CdrTypeParam = Literal["International", "Local", "Origin based"]
StatusParam = Literal["answered", "busy", "no-answer", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class FilterArgs:
    """The SPEC section 5 filters as received, before defaults and scoping."""

    direction: str
    time_from: str | None
    time_to: str | None
    account: str | None
    source: str | None
    destination: str | None
    cdr_type: str | None
    status: str | None
    rated: bool | None
    timed_out: bool | None
    flag: str | None


_TIME_HELP = (
    "UTC unless an offset is given: 2024-05-01, 2024-05-01 10:00, 2024-05-01T10:00:00Z,"
    " 2024-05-01T12:00:00+02:00"
)


def _filter_args(
    direction: Annotated[Direction, Query(description="which layout: inbound or outbound")],
    time_from: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=64,
            description="start time from (inclusive). "
            + _TIME_HELP
            + ". Default: `to` minus the maximum range (62 days)",
        ),
    ] = None,
    time_to: Annotated[
        str | None,
        Query(
            alias="to",
            max_length=64,
            description="start time to (exclusive). Default: now, rounded up to the minute",
        ),
    ] = None,
    account: Annotated[
        str | None,
        Query(max_length=MAX_TEXT, description="exact account id; account keys: their own only"),
    ] = None,
    source: Annotated[
        str | None, Query(max_length=MAX_TEXT, description="source number prefix")
    ] = None,
    destination: Annotated[
        str | None,
        Query(
            max_length=MAX_TEXT, description="destination prefix (inbound: also matches the DID)"
        ),
    ] = None,
    cdr_type: Annotated[CdrTypeParam | None, Query(alias="type", description="CDR type")] = None,
    status: Annotated[StatusParam | None, Query(description="call status")] = None,
    rated: Annotated[
        bool | None, Query(description="only rated (true) or unrated (false) calls")
    ] = None,
    timed_out: Annotated[
        bool | None, Query(description="only calls closed as timed out (true) or not (false)")
    ] = None,
    flag: Annotated[
        Flag | None,
        Query(
            description="only calls carrying this flag: account_mismatch, or why a call is"
            " unrated (unknown_trunk, unknown_did, no_rate)"
        ),
    ] = None,
) -> FilterArgs:
    return FilterArgs(
        direction,
        time_from,
        time_to,
        account,
        source,
        destination,
        cdr_type,
        status,
        rated,
        timed_out,
        flag,
    )


FilterDep = Annotated[FilterArgs, Depends(_filter_args)]


def _ceil_minute(value: datetime) -> datetime:
    floor = value.replace(second=0, microsecond=0)
    return floor if floor == value else floor + timedelta(minutes=1)


def scoped_filter(principal: Principal, args: FilterArgs, max_days: int) -> CdrFilter:
    """The `CdrFilter` a request may run: bounded range, the key's account forced in.

    Raises `ApiError` 400 for bad values or bounds, 403 for another account's data.
    """
    account = args.account or None
    if not principal.admin:
        if account is not None and account != principal.account:
            raise ApiError(403, "forbidden", "this API key can only read its own account's CDRs")
        account = principal.account
    try:
        flt = CdrFilter.from_strings(
            direction=args.direction,
            time_from=args.time_from,
            time_to=args.time_to,
            account=account,
            source=args.source,
            destination=args.destination,
            cdr_type=args.cdr_type,
            status=args.status,
            flag=args.flag,
        )
    except ValueError as ex:
        raise ApiError(400, "bad_request", _bad_time_message(str(ex))) from None
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC datetime
        raise ApiError(400, "bad_request", "from and to must lie between 2000 and 2100") from None
    for name, value in (("from", flt.time_from), ("to", flt.time_to)):
        if value is not None and not _TIME_MIN <= value < _TIME_MAX:
            raise ApiError(400, "bad_request", f"{name} must lie between 2000 and 2100")
    time_to = flt.time_to or _ceil_minute(datetime.now(UTC))
    time_from = flt.time_from or time_to - timedelta(days=max_days)
    if time_from >= time_to:
        raise ApiError(400, "bad_request", "from must be before to")
    if time_to - time_from > timedelta(days=max_days):
        raise ApiError(
            400,
            "bad_request",
            f"the range from..to may span at most {max_days} days (CDRs are kept two months)",
        )
    return replace(
        flt, time_from=time_from, time_to=time_to, rated=args.rated, timed_out=args.timed_out
    )


def _bad_time_message(text: str) -> str:
    """CdrFilter speaks of time_from/time_to; the API's parameters are from/to."""
    return text.replace("time_from", "from").replace("time_to", "to")


# --- the app -----------------------------------------------------------------------------


def _open_store(store: str | Callable[[], Client] | None) -> SharedStore:
    if callable(store):
        return SharedStore(store(), owned=True)
    return SharedStore(connect(store, readonly=True), owned=True)  # the API never writes


class CsvResponse(StreamingResponse):
    media_type = "text/csv"


def create_app(
    store: StoreSpec = None,
    keys: Path | str | KeyStore | None = None,
    *,
    max_days: int = DEFAULT_MAX_DAYS,
    export_chunk_rows: int = DEFAULT_EXPORT_CHUNK,
    limits: KeyLimits | None = None,
    allowed_hosts: str | None = None,
) -> FastAPI:
    """The FastAPI app.

    `store`: a DSN (default `default_dsn()`), a factory returning a client, or an open client
    (used, not closed: for tests and embedding). The store is opened when the app starts, in
    the serving process. `keys`: the keys file (default `default_keys_path()`) or a `KeyStore`.
    `export_chunk_rows`: rows fetched per store query while streaming a CSV (the memory bound,
    and what bounds how long an export holds the shared store at a time). `limits` (default: the
    ``CDRPIPE_API_KEY_*`` settings) bound each key; `allowed_hosts` names Host header values
    accepted besides the defaults, comma separated (default: ``CDRPIPE_API_ALLOWED_HOSTS``).
    """
    if max_days < 1 or export_chunk_rows < 1:
        raise ValueError("max_days and export_chunk_rows must be at least 1")
    settings = environment()
    if limits is None:
        limits = KeyLimits(
            concurrency=settings.api_key_concurrency,
            rate=settings.api_key_rate,
            burst=settings.api_key_burst,
        )
    if allowed_hosts is None:
        allowed_hosts = settings.api_allowed_hosts
    key_store = (
        keys
        if isinstance(keys, KeyStore)
        else KeyStore(Path(keys) if keys is not None else default_keys_path())
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if given:  # the caller owns the client
            yield
            return
        shared = _open_store(opener)
        app.state.store = shared
        try:
            yield
        finally:
            shared.close()
            app.state.store = None

    app = FastAPI(
        title="cdrpipe Call Logs API",
        version="1",
        description="Rated CDRs of the last two months: list, CSV export in the Call Logs"
        " layouts, KPIs. Authenticate with an API key (X-API-Key or Bearer).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; the service must work offline
        redoc_url=None,
        # a slash redirect's Location would be built from the Host header
        redirect_slashes=False,
    )
    app.state.keys = key_store
    app.state.limiter = KeyLimiter(limits)
    # A client handed in is usable at once, even by callers that skip the lifespan events.
    given = isinstance(store, Client)
    app.state.store = SharedStore(store, owned=False) if isinstance(store, Client) else None
    opener: str | Callable[[], Client] | None = None if isinstance(store, Client) else store
    app.state.max_days = max_days

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "bad_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        _log.error("store error: %s", exc)
        return _error(503, "store_unavailable", "the CDR store failed; try again later")

    app.add_middleware(HostCheckMiddleware, extra_hosts=parse_hosts(allowed_hosts))
    app.add_middleware(AccessLogMiddleware)  # outermost: it logs the Host check's 400s too

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def shared(request: Request) -> SharedStore:
        store: SharedStore | None = request.app.state.store
        if store is None:
            raise StoreError("the app has not started (no store open)")
        return store

    @app.get("/healthz", response_model=Health, tags=["service"], responses={503: _ERRORS[503]})
    async def healthz() -> Health:
        """Liveness (no key needed). Answered without the store, so that a busy store does
        not make a supervisor restart a working service; store failures show as 503 on the
        data routes."""
        return Health(status="ok")

    @app.get("/api/v1/me", response_model=Me, tags=["cdrs"], responses={401: _ERRORS[401]})
    async def me(principal: PrincipalDep) -> Me:
        """Who the key belongs to: its account, or the admin role."""
        return Me(key_id=principal.key_id, admin=principal.admin, account=principal.account)

    @app.get("/api/v1/cdrs", response_model=CdrPage, tags=["cdrs"], responses=_ERRORS)
    async def list_cdrs(
        request: Request,
        principal: PrincipalDep,
        args: FilterDep,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")] = 100,
        cursor: Annotated[
            str | None,
            Query(max_length=CURSOR_MAX_LENGTH, description="next_cursor of the previous page"),
        ] = None,
    ) -> CdrPage:
        """CDRs matching the filters, oldest first (start time, then id), one page at a time.

        Pagination is by keyset: each page returns `next_cursor`, valid with the same filters,
        and a deep page costs the same as the first.
        """
        flt = scoped_filter(principal, args, request.app.state.max_days)
        try:
            after = decode_cursor(cursor) if cursor else None
        except ValueError as ex:
            raise ApiError(400, "bad_request", str(ex)) from None
        slot = _slot(request, principal)
        try:
            rows = await shared(request).call(page_cdrs, flt, limit + 1, after)
        finally:
            slot.release()
        more = len(rows) > limit
        rows = rows[:limit]
        return CdrPage(
            items=[cdr_out(c) for c in rows],
            next_cursor=encode_cursor(rows[-1].start_time, rows[-1].id) if more else None,
            limit=limit,
            filter=filter_out(flt),
        )

    @app.get(
        "/api/v1/cdrs.csv",
        response_class=CsvResponse,
        tags=["cdrs"],
        responses={
            200: {
                "content": {"text/csv": {"schema": {"type": "string"}}},
                "description": "CSV in the seed layout of the direction",
            },
            **_CSV_ERRORS,
        },
    )
    async def export_csv(
        request: Request,
        principal: PrincipalDep,
        args: FilterDep,
        excel: Annotated[
            bool,
            Query(description="for Excel: a UTF-8 byte order mark and CRLF line ends"),
        ] = False,
    ) -> CsvResponse:
        """Every CDR matching the filters as CSV in the Call Logs layout of the direction,
        byte for byte what `cdrpipe export` writes. Streamed in chunks: memory stays flat.
        An empty amount cell means "not used or not rated" (the list tells them apart)."""
        flt = scoped_filter(principal, args, request.app.state.max_days)
        store = shared(request)
        # The key's slot is held until the last byte is sent (or the client goes away).
        slot = _slot(request, principal)
        try:
            # Read before answering, so a store failure is still a clean 503.
            first = await store.call_bulk(export_piece, flt, export_chunk_rows, export_start(flt))
        except BaseException:
            slot.release()
            raise

        async def body() -> AsyncIterator[bytes]:
            # One store query per turn at the lock, so short queries of others go in between;
            # rows become CSV outside the lock.
            try:
                cdrs, pos = first
                yield csv_header(flt, excel=excel) + await store.bulk_work(
                    csv_lines, flt, cdrs, excel=excel
                )
                while pos is not None:
                    cdrs, pos = await store.call_bulk(export_piece, flt, export_chunk_rows, pos)
                    if cdrs:
                        yield await store.bulk_work(csv_lines, flt, cdrs, excel=excel)
            finally:
                slot.release()

        stamp = f"{flt.time_from:%Y%m%dT%H%M%S}-{flt.time_to:%Y%m%dT%H%M%S}"
        name = f"cdrs-{flt.direction}-{stamp}.csv"
        return CsvResponse(
            body(),
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
            background=BackgroundTask(slot.release),  # also when the body never started
        )

    @app.get("/api/v1/kpis", response_model=KpiOut, tags=["kpis"], responses=_ERRORS)
    async def get_kpis(
        request: Request,
        principal: PrincipalDep,
        args: FilterDep,
        group_by: Annotated[
            Literal["none", "day", "hour", "trunk", "country", "cdr_type"],
            Query(description="group rows by this; totals are always included"),
        ] = "none",
    ) -> KpiOut:
        """Attempts, answered, ASR, ACD, NER, minutes, billed minutes, charged, unrated and
        timed-out counts over the CDRs matching the filters (docs/API.md defines them)."""
        flt = scoped_filter(principal, args, request.app.state.max_days)
        slot = _slot(request, principal)
        try:
            report = await shared(request).call(kpis, flt, group_by)
        finally:
            slot.release()
        return kpi_out(report, flt)

    app.include_router(page.router)
    page.mount_static(app)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without the 422 answers this app never gives (it says 400)."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "header", "path")]
        name = ".".join(loc) or "request"
        parts.append(f"{name}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
