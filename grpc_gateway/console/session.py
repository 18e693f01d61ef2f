"""Who may use the console, and which requests are the operator's own.

An operator signs in with one of the gateway's tokens; it is kept in a cookie the page's scripts cannot read
(HttpOnly), that travels only over HTTPS or to this machine (Secure; browsers treat loopback as secure) and
never with a request another site started (SameSite=Strict). Every action (a POST) must also carry the session's
CSRF token in a header, which a form or script of another site cannot set without the gateway agreeing (CORS),
and an Origin, when the browser sends one, that is the console's own. A gateway without tokens (loopback only)
asks for no sign-in, and still refuses actions another site starts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

from grpc_gateway.auth import TokenAuth

COOKIE = "taskapp_console"
CSRF_HEADER = "x-taskapp-csrf"
#: Seconds a sign-in lasts: a working day.
SESSION_SECONDS = 12 * 3600


class Refused(Exception):
    """A console request without a session, or an action that is not the operator's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConsoleAuth:
    def __init__(self, auth: TokenAuth | None) -> None:
        self.auth = auth
        #: Signs CSRF tokens when there is no operator token to sign them with (lives as long as the process).
        self._process_key = secrets.token_bytes(32)

    @property
    def asks_sign_in(self) -> bool:
        return self.auth is not None

    def accepts(self, token: str) -> bool:
        return self.auth is None or self.auth.accepts(token)

    def session(self, request: Request) -> str | None:
        """The signed-in operator's token ("" when the gateway asks for none), or None: not signed in."""
        if self.auth is None:
            return ""
        token = request.cookies.get(COOKIE)
        return token if token and self.auth.accepts(token) else None

    def csrf_token(self, session: str) -> str:
        key = hashlib.sha256(session.encode()).digest() if session else self._process_key
        return hmac.new(key, b"taskapp console action", hashlib.sha256).hexdigest()

    def check_action(self, request: Request) -> str:
        """The session of a POST that is the operator's own; otherwise `Refused`."""
        session = self.session(request)
        if session is None:
            raise Refused(401, "sign in first")
        if not same_origin(request):
            raise Refused(403, "refused: this request came from another site")
        presented = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), self.csrf_token(session).encode()):
            raise Refused(403, "refused: the request does not carry this console's CSRF token")
        return session


def same_origin(request: Request) -> bool:
    """Whether the browser says the request comes from the console's own pages (when it says anything)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"
