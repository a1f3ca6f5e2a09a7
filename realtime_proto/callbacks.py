"""How the answers of application callbacks become events (one place for every adapter)."""

from __future__ import annotations

from collections.abc import Mapping

from .events import AuthenticationAnswered, AuthorizationAnswered, User

__all__ = ["authentication_answer", "authorization_answer"]


def authorization_answer(request_id: str, result: object = None,
                         error: BaseException | None = None) -> AuthorizationAnswered:
    """The event for what an authorization callback returned (or raised).

    True allows; a mapping allows and is the member's presence info; anything else
    (False, None) refuses. An exception refuses with 4500 and is never re-raised.
    """
    if error is not None:
        return AuthorizationAnswered(request_id=request_id, allowed=False, error=repr(error))
    if isinstance(result, Mapping):
        return AuthorizationAnswered(request_id=request_id, allowed=True, info=dict(result))
    return AuthorizationAnswered(request_id=request_id, allowed=result is True)


def authentication_answer(request_id: str, result: object = None,
                          error: BaseException | None = None) -> AuthenticationAnswered:
    """The event for what an authenticate hook returned (or raised).

    A `User` (or a user id string) authenticates; None means anonymous; False or an
    exception refuses the connection with 401.
    """
    if error is not None:
        return AuthenticationAnswered(request_id=request_id, rejected=True,
                                      reason="authentication failed")
    if isinstance(result, User):
        return AuthenticationAnswered(request_id=request_id, user=result)
    if isinstance(result, str) and result:
        return AuthenticationAnswered(request_id=request_id, user=User(id=result))
    if result is None:
        return AuthenticationAnswered(request_id=request_id)
    return AuthenticationAnswered(request_id=request_id, rejected=True,
                                  reason="authentication refused")
