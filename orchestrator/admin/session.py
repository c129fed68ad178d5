"""How a caller proves it holds the admin token, and the browser's session.

- Scripts and the CLI send `Authorization: Bearer TOKEN`.
- A browser opens the URL `fleetlm serve` prints, `/?token=TOKEN`, once: the answer is a redirect
  to the same address without the token, setting it as an HttpOnly, SameSite=Strict cookie (so
  it is neither in the address bar, the history nor readable by scripts). Every later request
  of the page carries the cookie.
- A state-changing request (anything but GET/HEAD/OPTIONS) authorized by the cookie must come
  from the dashboard itself: its Origin (or, lacking that, its Referer) must name this host.
  SameSite=Strict already keeps the cookie off cross-site requests; this is the second lock.
  A bearer token is never sent by a browser on its own, so it needs no such check.
- `?token=` on an API route works for GET only (a link that shows something); it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from starlette.responses import RedirectResponse

from orchestrator.admin import PREFIX

COOKIE = "fleetlm_admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Credential:
    token: str
    via: Literal["bearer", "cookie", "query", "none"]


def presented(request: Request) -> Credential:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credential(value.strip(), "bearer")
    query = request.query_params.get("token", "")
    if query:
        return Credential(query, "query")
    cookie = request.cookies.get(COOKIE, "")
    if cookie:
        return Credential(cookie, "cookie")
    return Credential("", "none")


def refusal(request: Request, cred: Credential) -> str | None:
    """Why an authorized request is still refused (None: it is not)."""
    if request.method in SAFE_METHODS:
        return None
    if cred.via == "query":
        return "a token in the URL only opens pages; send it as a bearer header"
    if cred.via == "cookie" and not same_origin(request):
        return "cross-site request refused: its Origin does not match this host"
    return None


def same_origin(request: Request) -> bool:
    host = request.headers.get("host", "")
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    return bool(host) and urlsplit(origin).netloc == host


def sign_in(request: Request, token: str) -> RedirectResponse:
    """The same address without `token`, with the token kept as the session cookie."""
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    url = request.url.path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


def wants_page(request: Request, cred: Credential) -> bool:
    """A browser opening a page with `?token=`: sign it in."""
    return cred.via == "query" and request.method == "GET" and not _is_api(request)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(PREFIX) or request.url.path == "/metrics"
