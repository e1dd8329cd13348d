"""The review station's web application (FastAPI, Jinja2 templates, one small static stylesheet).

Pages: ``/quarantine`` (list with filters; thumbnails of de-identified photographs for
reviewers), ``/quarantine/{id}`` (the QA panel or the metadata finding, decisions), ``/status``
(charts from the journal), ``/audit`` and ``/audit.csv`` (reviewers), ``/login``, ``/logout``.

Rules enforced here, for every request:

- who: a valid session cookie (password logins) or a trusted proxy's headers; anything else is
  sent to the login page (pages) or refused (images, actions);
- what: viewers see the list and the status only; originals, QA panels and decisions need the
  reviewer role — HTTP 403 on the direct URLs as well as hidden in the pages;
- CSRF: every POST carries a token bound to the session, checked before anything else;
- caching: every response is ``Cache-Control: no-store`` (no original left in a browser cache);
- CSP: only this origin's stylesheet, script and images; no inline script, no framing.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from deid_core.errors import InvalidInputError
from dicom_io.preview import render_png, summarize
from gateway.events import QuarantineReason
from gateway.interlock import weaker_route
from gateway.logs import get_logger
from gateway.quarantine import INSTANCE_FILE, QuarantineError
from gateway.review import charts
from gateway.review.artifacts import ArtifactKind, artifacts_of, classify, thumbnail_png
from gateway.review.audit import AuditAction, audit_csv, read_audit, utc_text
from gateway.review.decisions import Decision, DecisionRefused, carry_out, choices_for
from gateway.review.identity import Session
from gateway.review.status import read_status
from gateway.review.texts import reason_text, reason_title
from gateway.review.users import User

if TYPE_CHECKING:
    from gateway.review.station import ReviewStation

LOG = get_logger("gateway.review")
HERE = Path(__file__).resolve().parent
ENTRY_ID = re.compile(r"^q-[0-9a-f]{16}$")
PAGE_SIZE = 48
LOGIN_NONCE_COOKIE = "review_login"
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


#: Placeholders for the reason field: what a good reason looks like for each finding.
WHY_HINTS = {
    QuarantineReason.BURNED_IN_ANNOTATION.value: "e.g. checked the image: no names or ids",
    QuarantineReason.BURNED_IN_UNKNOWN.value: "e.g. checked the image: no names or ids",
    QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value: "e.g. lesion border intact in the panel",
    QuarantineReason.LESION_VANISHED.value: "e.g. lesion still visible, mask missed it",
    QuarantineReason.DEAD_LETTER.value: "e.g. archive fixed, send again",
    QuarantineReason.NO_ROUTE.value: "e.g. dermatology photo from a new camera",
    QuarantineReason.PROCESSING_ERROR.value: "e.g. fixed in version X, process again",
    QuarantineReason.OUTBOX_FILE_MISSING.value: "e.g. disk cleaned by mistake, send again",
}


@dataclass(frozen=True)
class Identity:
    user: User
    #: What CSRF tokens are bound to: the session id, or the proxy-asserted user name.
    csrf_subject: str
    session: Session | None = None


class NeedLogin(Exception):
    """No valid session (or no trusted proxy identity)."""


class Forbidden(Exception):
    """Signed in, but the role does not allow this."""


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _parse_date(text: str | None) -> float | None:
    if not text:
        return None
    try:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return day.timestamp()


def _safe_next(target: str | None) -> str:
    """Only same-site paths after login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/quarantine"


def create_app(station: ReviewStation) -> FastAPI:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["reason_title"] = reason_title
    env.globals["reason_text"] = reason_text
    cookie_name = "__Host-review" if station.tls else "review_session"
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    verify_slots = threading.BoundedSemaphore(2)  # argon2 uses 64 MiB per verification

    # --- plumbing ------------------------------------------------------------------------------

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def render(
        request: Request, template: str, identity: Identity | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        csrf = station.csrf.issue(identity.csrf_subject) if identity else ""
        html = env.get_template(template).render(
            request=request,
            me=identity.user if identity else None,
            csrf=csrf,
            proxy_auth=station.proxy is not None,
            site=station.cfg.site.name or station.cfg.site.id or "deid-gateway",
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    def identify(request: Request) -> Identity | None:
        if station.proxy is not None:
            host = request.client.host if request.client else None
            user = station.proxy.identify(host, request.headers)
            return Identity(user, "proxy:" + user.name) if user else None
        session = station.sessions.read(request.cookies.get(cookie_name))
        if session is None or station.users is None:
            return None
        current = station.users.user(session.user.name)
        if current is None or current.role != session.user.role:
            return None  # removed or demoted since login: the session ends now
        return Identity(current, session.sid, session)

    def signed_in(request: Request) -> Identity:
        identity = identify(request)
        if identity is None:
            raise NeedLogin()
        return identity

    def reviewer(request: Request) -> Identity:
        identity = signed_in(request)
        if not identity.user.may_decide:
            raise Forbidden()
        return identity

    async def checked_form(request: Request, identity: Identity) -> dict[str, str]:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not station.csrf.verify(identity.csrf_subject, values.get("csrf")):
            raise StarletteHTTPException(403, "missing or invalid CSRF token")
        return values

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, exc: NeedLogin) -> Response:
        if station.proxy is not None:
            return render(
                request,
                "error.html",
                None,
                403,
                title="Not signed in",
                message="Sign in through the site's reverse proxy to use this station.",
            )
        if request.method == "GET" and not request.url.path.endswith((".png", ".csv")):
            query = urlencode({"next": request.url.path})
            return RedirectResponse(f"/login?{query}", status_code=303)
        return PlainTextResponse("sign in first", status_code=401)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return render(
            request,
            "error.html",
            identify(request),
            403,
            title="Reviewers only",
            message="Original images, QA panels, decisions and the audit trail are for reviewers.",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return render(
            request,
            "error.html",
            identify(request),
            exc.status_code,
            title={403: "Refused", 404: "Not found"}.get(exc.status_code, "Error"),
            message=str(exc.detail),
        )

    def entry_or_404(entry_id: str) -> Any:
        if not ENTRY_ID.match(entry_id):
            raise StarletteHTTPException(404, "no such quarantine entry")
        try:
            return station.quarantine.show(entry_id)
        except QuarantineError:
            raise StarletteHTTPException(404, "no such quarantine entry") from None

    # --- sign in / out -------------------------------------------------------------------------

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/quarantine", status_code=303)

    def login_page(request: Request, status: int = 200, error: str = "") -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        response = render(
            request,
            "login.html",
            None,
            status,
            login_csrf=station.csrf.issue("login:" + nonce),
            next=_safe_next(request.query_params.get("next")),
            error=error,
        )
        response.set_cookie(
            LOGIN_NONCE_COOKIE,
            nonce,
            max_age=3600,
            httponly=True,
            secure=station.tls,
            samesite="strict",
            path="/login",
        )
        return response

    @app.get("/login")
    def login_form(request: Request) -> Response:
        if station.proxy is not None:
            return RedirectResponse("/quarantine", status_code=303)
        if identify(request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        return login_page(request)

    @app.post("/login")
    async def login(request: Request) -> Response:
        if station.proxy is not None or station.users is None:
            raise StarletteHTTPException(404, "sign-in is done by the site's proxy")
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        nonce = request.cookies.get(LOGIN_NONCE_COOKIE, "")
        if not nonce or not station.csrf.verify("login:" + nonce, values.get("csrf")):
            return login_page(request, 403, "The form expired. Please sign in again.")
        name = values.get("username", "").strip()
        password = values.get("password", "")
        peer = request.client.host if request.client else "unknown"
        keys = ["addr:" + peer, "user:" + name.lower()]
        wait = station.throttle.retry_after(keys)
        if wait is not None:
            response = login_page(
                request,
                429,
                f"Too many failed sign-ins. Try again in {int(wait) + 1} seconds.",
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        from starlette.concurrency import run_in_threadpool

        def _verify() -> User | None:
            assert station.users is not None
            with verify_slots:
                return station.users.verify(name, password)

        user = await run_in_threadpool(_verify) if name and password else None
        if user is None:
            station.throttle.failed(keys)
            known = station.users.user(name) is not None if name else False
            # an unknown name is not recorded as typed: it may be a password typed in the wrong box
            station.audit.record(
                name if known else "(unknown)", "", AuditAction.LOGIN_FAILED, outcome="refused"
            )
            LOG.warning("review_login_failed", known_user=known)
            return login_page(request, 401, "Wrong user name or password.")
        station.throttle.succeeded(["user:" + name.lower()])
        value, _ = station.sessions.issue(user)
        station.audit.record(user.name, user.role.value, AuditAction.LOGIN)
        LOG.info("review_login", user=user.name, role=user.role.value)
        done = RedirectResponse(_safe_next(values.get("next")), status_code=303)
        done.set_cookie(
            cookie_name,
            value,
            max_age=int(station.sessions.lifetime_s),
            httponly=True,
            secure=station.tls,
            samesite="strict",
            path="/",
        )
        done.delete_cookie(LOGIN_NONCE_COOKIE, path="/login")
        return done

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        identity = signed_in(request)
        await checked_form(request, identity)
        if identity.session is not None:
            station.sessions.revoke(identity.session)
        station.audit.record(identity.user.name, identity.user.role.value, AuditAction.LOGOUT)
        response = RedirectResponse(
            "/login" if station.proxy is None else "/quarantine", status_code=303
        )
        response.delete_cookie(cookie_name, path="/", secure=station.tls, httponly=True)
        return response

    # --- the quarantine ------------------------------------------------------------------------

    @app.get("/quarantine")
    def quarantine_list(request: Request) -> Response:
        identity = signed_in(request)
        q = request.query_params
        state = q.get("state", "held")
        rows = station.quarantine.list(include_closed=state == "all")
        routes = sorted({r.route for r in rows if r.route})
        reasons = sorted({r.reason for r in rows})
        route, reason = q.get("route", ""), q.get("reason", "")
        since, until = _parse_date(q.get("since")), _parse_date(q.get("until"))
        selected = [
            r
            for r in reversed(rows)  # newest first
            if (not route or r.route == route)
            and (not reason or r.reason == reason)
            and (since is None or r.created_at >= since)
            and (until is None or r.created_at < until + 86400)
        ]
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            page = 1
        shown = selected[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        cards = []
        for row in shown:
            entry = station.quarantine.show(row.id) if row.state == "held" else None
            arts = artifacts_of(list(entry.artifacts)) if entry else []
            cards.append(
                {
                    "row": row,
                    "details": dict(entry.details) if entry else {},
                    "thumb": any(a.kind is ArtifactKind.DEIDENTIFIED and a.is_image for a in arts),
                    "photo": bool(arts),
                }
            )
        done = q.get("done", "")
        done_entry = q.get("entry", "")
        flash = ""
        if done in {d.value for d in Decision} and ENTRY_ID.match(done_entry):
            flash = {
                "release": f"{done_entry} released.",
                "rerun": f"{done_entry} sent back to the pipeline.",
                "purge": f"{done_entry} purged.",
            }[done]
        return render(
            request,
            "list.html",
            identity,
            cards=cards,
            total=len(selected),
            page=page,
            pages=max(1, (len(selected) + PAGE_SIZE - 1) // PAGE_SIZE),
            routes=routes,
            reasons=reasons,
            filters={
                "route": route,
                "reason": reason,
                "since": q.get("since", ""),
                "until": q.get("until", ""),
                "state": state,
            },
            flash=flash,
            query=lambda **kw: urlencode(
                {
                    **{k: v for k, v in q.items() if k not in ("done", "entry", "page")},
                    **kw,
                }
            ),
        )

    @app.get("/quarantine/{entry_id}")
    def quarantine_item(request: Request, entry_id: str) -> Response:
        identity = signed_in(request)
        return item_page(request, identity, entry_id)

    def item_page(
        request: Request, identity: Identity, entry_id: str, status: int = 200, error: str = ""
    ) -> HTMLResponse:
        entry = entry_or_404(entry_id)
        row = entry.row
        arts = artifacts_of(list(entry.artifacts))
        held = row.state == "held"
        details = dict(entry.details)
        iou, threshold = details.get("iou"), details.get("threshold")
        gate = None
        if isinstance(iou, int | float) and isinstance(threshold, int | float):
            gate = {"iou": float(iou), "threshold": float(threshold)}
        instance = entry.folder / INSTANCE_FILE
        summary = summarize(instance) if held and instance.is_file() else None
        history = station.journal.decisions(entry_id)
        audit = (
            read_audit(station.reader, entry_id=entry_id, newest_first=True, limit=50)
            if identity.user.may_decide
            else []
        )
        return render(
            request,
            "item.html",
            identity,
            status,
            row=row,
            details=details,
            gate=gate,
            panels=[a for a in arts if a.kind is ArtifactKind.PANEL and a.is_image],
            pictures=[a for a in arts if a.kind is not ArtifactKind.PANEL and a.is_image],
            downloads=[a for a in arts if not a.is_image],
            show_instance=held
            and not any(a.is_image for a in arts)
            and summary is not None
            and summary.has_pixels,
            summary=summary,
            choices=choices_for(row, station.quarantine.route_pixels) if held else None,
            # a re-run onto a weaker pixel step is not offered (only an operator can force it)
            routes=sorted(
                r
                for r in station.routes
                if not weaker_route(r, row.route, station.quarantine.route_pixels)
            ),
            history=history,
            audit=audit,
            error=error,
            is_dead_letter=row.reason == QuarantineReason.DEAD_LETTER.value,
            why_hint=WHY_HINTS.get(row.reason, "what you checked, and why this decision"),
        )

    def image_response(data: bytes, media_type: str) -> Response:
        return Response(data, media_type=media_type)

    @app.get("/quarantine/{entry_id}/thumb.png")
    def thumbnail(request: Request, entry_id: str) -> Response:
        reviewer(request)
        entry = entry_or_404(entry_id)
        for art in artifacts_of(list(entry.artifacts)):
            if art.kind is ArtifactKind.DEIDENTIFIED and art.is_image:
                path = entry.folder / art.name
                if path.exists():
                    try:
                        return image_response(thumbnail_png(path.read_bytes()), "image/png")
                    except Exception:
                        break
        raise StarletteHTTPException(404, "no de-identified image for this entry")

    @app.get("/quarantine/{entry_id}/files/{name}")
    def artifact(request: Request, entry_id: str, name: str) -> Response:
        identity = reviewer(request)
        entry = entry_or_404(entry_id)
        if name not in entry.artifacts:
            raise StarletteHTTPException(404, "no such file in this entry")
        art = classify(name)
        path = entry.folder / name
        if not path.is_file():
            raise StarletteHTTPException(404, "no such file in this entry")
        if art.shows_original:
            station.audit.record(
                identity.user.name,
                identity.user.role.value,
                AuditAction.VIEW_ORIGINAL,
                entry_id=entry_id,
                detail={"file": name, "kind": art.kind.value},
            )
        response = image_response(path.read_bytes(), art.media_type)
        if not art.is_image:
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    @app.get("/quarantine/{entry_id}/instance.png")
    def instance_picture(request: Request, entry_id: str) -> Response:
        identity = reviewer(request)
        entry = entry_or_404(entry_id)
        path = entry.folder / INSTANCE_FILE
        if entry.row.state != "held" or not path.is_file():
            raise StarletteHTTPException(404, "the instance is no longer kept")
        try:
            png = render_png(path.read_bytes())
        except InvalidInputError as exc:
            raise StarletteHTTPException(422, str(exc)) from None
        station.audit.record(
            identity.user.name,
            identity.user.role.value,
            AuditAction.VIEW_ORIGINAL,
            entry_id=entry_id,
            detail={"file": INSTANCE_FILE, "kind": "instance"},
        )
        return image_response(png, "image/png")

    @app.post("/quarantine/{entry_id}/{decision}")
    async def decide(request: Request, entry_id: str, decision: str) -> Response:
        identity = reviewer(request)
        try:
            chosen = Decision(decision)
        except ValueError:
            raise StarletteHTTPException(404, "no such decision") from None
        entry_or_404(entry_id)
        try:
            form = await checked_form(request, identity)
        except StarletteHTTPException:
            station.audit.record(
                identity.user.name,
                identity.user.role.value,
                AuditAction(chosen.value),
                entry_id=entry_id,
                outcome="refused: CSRF token missing or invalid",
            )
            raise
        why = form.get("why", "")
        route = form.get("route", "") or None
        from starlette.concurrency import run_in_threadpool

        def _carry_out() -> str:
            with station.decide_lock:  # one decision at a time: no double release
                row = station.journal.quarantine_entry(entry_id)
                assert row is not None
                return carry_out(
                    chosen,
                    row,
                    quarantine=station.quarantine,
                    spool=station.spool,
                    outbox=station.outbox,
                    why=why,
                    by=identity.user.name,
                    route=route if chosen is Decision.RERUN else None,
                    routes=station.routes,
                )

        try:
            message = await run_in_threadpool(_carry_out)
        except DecisionRefused as exc:
            station.audit.record(
                identity.user.name,
                identity.user.role.value,
                AuditAction(chosen.value),
                entry_id=entry_id,
                why=why.strip(),
                outcome=f"refused: {exc}",
            )
            status = 409 if "already" in str(exc) else 400
            return item_page(request, identity, entry_id, status, str(exc))
        station.audit.record(
            identity.user.name,
            identity.user.role.value,
            AuditAction(chosen.value),
            entry_id=entry_id,
            why=why.strip(),
            outcome=message,
            detail={"route": route} if route and chosen is Decision.RERUN else None,
        )
        LOG.info("review_decision", entry=entry_id, decision=chosen.value, user=identity.user.name)
        station.on_decision()
        query = urlencode({"done": chosen.value, "entry": entry_id})
        return RedirectResponse(f"/quarantine?{query}", status_code=303)

    # --- status and audit ----------------------------------------------------------------------

    @app.get("/status")
    def status_page(request: Request) -> Response:
        identity = signed_in(request)
        try:
            hours = int(request.query_params.get("hours", "24"))
        except ValueError:
            hours = 24
        hours = hours if hours in (6, 24, 72) else 24
        report = read_status(station.reader, hours)
        fmt = "%H:%M" if hours <= 24 else "%d %H:%M"
        labels = [dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt) for t in report.bucket_starts]
        vocabulary = [r.value for r in QuarantineReason]
        colours = charts.colours_for(list(report.rejections), vocabulary)
        return render(
            request,
            "status.html",
            identity,
            report=report,
            hours=hours,
            throughput_svg=charts.line_chart(
                f"Throughput per {report.bucket_s / 3600:g} h (UTC)",
                labels,
                {"received": report.received, "delivered": report.delivered},
            ),
            backlog_svg=charts.line_chart(
                "Backlog (instances not yet forwarded or quarantined)",
                labels,
                {"backlog": report.backlog},
                {"backlog": charts.PALETTE[3]},
            ),
            rejections_svg=charts.bar_chart(
                "Quarantined, by reason",
                labels,
                {reason_title(k): v for k, v in report.rejections.items()}
                or {"none": [0] * len(labels)},
                {reason_title(k): c for k, c in colours.items()} or None,
            ),
        )

    @app.get("/audit")
    def audit_page(request: Request) -> Response:
        identity = reviewer(request)
        entry = request.query_params.get("entry", "")
        entry = entry if ENTRY_ID.match(entry) else ""
        records = read_audit(station.reader, entry_id=entry or None, newest_first=True, limit=500)
        return render(request, "audit.html", identity, records=records, entry=entry, utc=utc_text)

    @app.get("/audit.csv")
    def audit_export(request: Request) -> Response:
        identity = reviewer(request)
        since = _parse_date(request.query_params.get("since"))
        until = _parse_date(request.query_params.get("until"))
        text = audit_csv(
            read_audit(station.reader, since=since, until=until + 86400 if until else None)
        )
        station.audit.record(
            identity.user.name, identity.user.role.value, AuditAction.EXPORT, detail={"via": "web"}
        )
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="review-audit-{stamp}.csv"'},
        )

    return app
