"""Long-lived objects kept out of the garbage collector's way.

CPython's cyclic collector walks every object it tracks on each full collection, and a full
collection comes whenever the objects promoted to its oldest generation have grown by a quarter.
A server holds many requests in flight at once: their objects live long enough to be promoted,
then die, so full collections keep coming, and each one walks again the 100,000 and more
objects that the imports, the app, its schemas and its connections made at start and that
live as long as the process (bench/api_profile.py measures what that costs a webhook).

``gc.freeze()`` moves every object alive now to a permanent generation the collector never
walks. Freed by reference counting they still are; only a reference cycle among them would
stay, and what a process builds at start lives until it exits anyway. Frozen before a fork, the
objects are not written to by the children's collections either, so the pages stay shared
(the reason CPython's documentation gives for it).
"""

from __future__ import annotations

import gc

from sqlalchemy.orm import configure_mappers


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then freeze the rest: call once the process has
    built what it serves with, before it serves (and before it forks)."""
    # SQLAlchemy configures the ORM's mappers on their first use: in a worker, that would be
    # in every pool process, after the fork, on its first task (13 ms each), and their
    # objects would miss the freeze.
    configure_mappers()
    gc.collect()
    gc.freeze()
