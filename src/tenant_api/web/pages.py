"""GET /invites/accept, GET /verify-email and their assets under /static/.

The links in mails lead here (ServerSettings.base_url, PUBLIC_URL). Each secret rides in
the link's fragment (#invite_token=..., #token=...), which browsers never send to a
server: the page reads it in JavaScript and posts it to the API in a request body.

Every response carries a Content-Security-Policy that allows this origin's scripts,
styles and API calls only (no inline script or style, nothing from another origin, no
framing, no form posting anywhere), no referrer, and no caching of the pages.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException

from tenant_api.routing import Routes

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ASSETS = {"invite.js": "text/javascript", "verify.js": "text/javascript", "page.css": "text/css"}
PUBLIC = {"public": True}


@cache
def _file(name: str) -> bytes:
    return resources.files("tenant_api.web").joinpath("static", name).read_bytes()


def _page(name: str) -> Response[bytes]:
    return Response(_file(name), media_type="text/html; charset=utf-8",
                    headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@get("/invites/accept", opt=PUBLIC, include_in_schema=False, sync_to_thread=False)
def invite_page() -> Response[bytes]:
    return _page("invite.html")


@get("/verify-email", opt=PUBLIC, include_in_schema=False, sync_to_thread=False)
def verify_page() -> Response[bytes]:
    return _page("verify.html")


@get("/static/{name:str}", opt=PUBLIC, include_in_schema=False, sync_to_thread=False)
def asset(name: str) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException("no such file")
    return Response(_file(name), media_type=f"{media_type}; charset=utf-8",
                    headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


web_router = Router(path="/", route_handlers=[invite_page, verify_page, asset])


ROUTES = Routes(handlers=[web_router])
