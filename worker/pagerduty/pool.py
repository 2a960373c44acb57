"""What both PagerDuty clients share: one httpx connection pool per client, closed with it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


class PooledClient:
    """Owns an ``httpx.Client`` (one connection pool per process and API, made at start):
    ``close()`` it at shutdown, or use the client as a context manager."""

    _http: httpx.Client

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
