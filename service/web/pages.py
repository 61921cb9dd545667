"""Server-rendered pages (Jinja2) of the dashboard and the ranking form, and their static files.

The pages are shells: everything they show comes from the public API, fetched by the browser
with the user's key (kept in ``sessionStorage``) or a rater link's token. Only the rater page
reads Redis here, to check its token and name the job — a rater cannot call ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from .. import keys, raters
from ..problems import NotFound

HERE = Path(__file__).parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
VERSION = hashlib.sha256(b"".join(p.read_bytes() for _, p in sorted(STATIC.items()))).hexdigest()[:12]
templates = Jinja2Templates(directory=HERE / "templates")
# Pages load only their own scripts and styles, talk only to this origin, and never leak a
# rater link (its token is in the URL) through the Referer header.
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
JobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,100}$")]

router = APIRouter(include_in_schema=False)


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``name`` with the shared context (static version, rater flag)."""
    context.setdefault("rater", None)
    resp = templates.TemplateResponse(request, name, {"v": VERSION, **context}, status_code=status)
    resp.headers.update(SECURITY)
    return resp


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", response_class=HTMLResponse)
async def jobs_page(request: Request) -> HTMLResponse:
    """Job list: status, algorithm, objective kind, progress, age; filter by status."""
    return page(request, "jobs.html", title="Jobs")


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: JobId) -> HTMLResponse:
    """One job: live convergence plot, config, result, artifacts, cancel, rater links."""
    return page(request, "job.html", title=f"Job {job_id}", job_id=job_id)


@router.get("/ui/jobs/{job_id}/rank", response_class=HTMLResponse)
async def rank_page(request: Request, job_id: JobId) -> HTMLResponse:
    """The ranking form, for the job's owner (API key in the session)."""
    return page(request, "rank.html", title="Rank", job_id=job_id, job_name="", budget="")


@router.get("/ui/r/{token}", response_class=HTMLResponse)
async def rater_page(request: Request, token: Annotated[str, PathParam(max_length=200)]) -> HTMLResponse:
    """The ranking form of one job, for whoever holds the rater link; nothing else is reachable."""
    r = request.app.state.store.r
    rec = await raters.lookup(r, token) if token.startswith(raters.PREFIX) else None
    raw = await r.hmget(keys.job(rec["job_id"]), ["spec_public", "name"]) if rec else [None, None]
    if rec is None or raw[0] is None:
        resp = page(request, "gone.html", status=404, title="Link not valid", rater=True)
        resp.headers["Cache-Control"] = "no-store"
        return resp
    spec = json.loads(raw[0])
    resp = page(request, "rank.html", title="Rank", job_id=rec["job_id"], rater=token,
                job_name=(raw[1] or b"").decode(), budget=json.dumps(spec.get("budget") or {}))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@router.get("/ui/static/{name}")
async def static_file(request: Request, name: str) -> Response:
    """The UI's own JS/CSS (no CDN: the UI works offline). Revalidated by ETag."""
    path = STATIC.get(name)
    if path is None:
        raise NotFound(f"no static file {name}")
    tag = f'"{VERSION}"'
    headers = {"ETag": tag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(path.read_bytes(), media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                    headers=headers)
