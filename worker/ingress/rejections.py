"""The api's side of the quarantine: rejected requests written to the database in group commits,
and never an error for the request that was rejected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from models import utcnow
from worker.ingress.group_commit import GroupCommit
from worker.ops.rejected import QuarantineBounds, Rejection, keep

log = logging.getLogger(__name__)

# Seconds a rejected request waits for its row: its answer is sent after the row is written
# (CoScale will not send it again), but never later than this, database or not.
KEEP_TIMEOUT = 5.0


class QuarantineWriter:
    """Keeps rejections in the quarantine table. A storm of refused requests (a rotated token
    during an alert storm) shares writes as accepted events do (``GroupCommit``)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        bounds: QuarantineBounds,
        *,
        timeout: float = KEEP_TIMEOUT,
    ) -> None:
        self._sessions = sessions
        self._bounds = bounds
        self._timeout = timeout
        self._commit: GroupCommit[Rejection, int] = GroupCommit(
            self._write, thread_name="quarantine-writer"
        )

    def _write(self, rejections: Sequence[Rejection]) -> list[int]:
        with self._sessions.begin() as session:
            return keep(session, rejections, self._bounds, utcnow())

    async def keep(self, rejection: Rejection) -> None:
        """Write ``rejection``; log (never raise) when that fails or takes too long."""
        what = (
            f"{rejection.method} {rejection.path} answered {rejection.status} "
            f"({rejection.size} bytes)"
        )
        try:
            row_id = await asyncio.wait_for(self._commit.submit(rejection), self._timeout)
        except TimeoutError:
            log.error(
                "rejected request %s not kept: the database took over %gs", what, self._timeout
            )
        except Exception as exc:  # the database is down: answer the 4xx anyway
            # The class only: a database error's text can quote the statement's parameters,
            # and those hold the body.
            log.error("rejected request %s not kept: %s", what, type(exc).__name__)
        else:
            log.warning(
                "rejected request %s: %s; kept as #%d (see `pagerbridge rejected`)",
                what,
                rejection.reason,
                row_id,
            )

    def close(self) -> None:
        self._commit.close()
