"""Who may use the console: operator tokens, the signed session cookie, and the CSRF rule.

Stateless: the session is a cookie signed with ``itsdangerous`` under a key derived from the
configured operator tokens, so every api process accepts it and changing the tokens signs
everyone out. It holds the token's id (a hash, never the token) and the session's CSRF token;
it expires after ``PAGERBRIDGE_CONSOLE_SESSION_HOURS`` (the signature's timestamp is checked,
whatever the browser keeps).

CSRF (OWASP's CSRF Prevention Cheat Sheet): every state-changing request is a POST carrying
the session's synchronizer token in a hidden field, compared in constant time; the cookie is
``SameSite=Strict`` besides. The sign-in form, before there is a session, uses a double-submit
cookie: a random value both in a cookie and in the form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from worker.delivery.gate import token_id
from worker.ingress.auth import token_is_valid

SESSION_COOKIE = "pagerbridge_console"
SIGN_IN_COOKIE = "pagerbridge_console_sign_in"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/ui"
# Minutes a sign-in form stays good for: the double-submit cookie's life.
SIGN_IN_FORM_MINUTES = 30
_SALT = "pagerbridge-console-session"


@dataclass(frozen=True, slots=True)
class OperatorSession:
    operator: str  # token_id of the operator token signed in with
    csrf: str


class OperatorAuth:
    """Checks operator tokens and issues and reads the console's session cookies."""

    def __init__(self, tokens: tuple[str, ...], *, session_seconds: float) -> None:
        self._tokens = tokens
        self._operators = frozenset(token_id(token) for token in tokens)
        self.session_seconds = int(session_seconds)
        self._sessions = URLSafeTimedSerializer(_signing_key(tokens), salt=_SALT)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def sign_in(self, presented: str) -> OperatorSession | None:
        """A new session for a valid operator token, else ``None``."""
        if not token_is_valid(presented, self._tokens):
            return None
        return OperatorSession(token_id(presented), secrets.token_urlsafe(32))

    def cookie_value(self, session: OperatorSession) -> str:
        return self._sessions.dumps({"o": session.operator, "c": session.csrf})

    def session_of(self, cookie: str | None) -> OperatorSession | None:
        """The session a cookie carries, if its signature is good, it has not expired, and its
        token is still configured."""
        if not cookie:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=self.session_seconds)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict):
            return None
        operator, csrf = data.get("o"), data.get("c")
        if not isinstance(operator, str) or not isinstance(csrf, str):
            return None
        if operator not in self._operators:
            return None
        return OperatorSession(operator, csrf)


def same_token(expected: str | None, given: str | None) -> bool:
    """The CSRF comparison: both present and equal, in constant time."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_form_token() -> str:
    return secrets.token_urlsafe(32)


def _signing_key(tokens: tuple[str, ...]) -> bytes:
    # Derived, not a setting of its own: one secret fewer to deploy, and rotating the operator
    # tokens ends every session signed under the old ones.
    material = "\0".join(sorted(tokens)).encode()
    return hashlib.sha256(b"pagerbridge console session key\0" + material).digest()
