"""
How the open-file limit (RLIMIT_NOFILE) is shared by the two listeners.

Every connection holds a descriptor, and so do the listening sockets, the log, the state
directory and the STS client's pool. Once the table is full, accept(2) fails with EMFILE
for every listener of the process, and then no client is served at all: an idle crowd on
one port starves the other. So each listener gets a connection cap (imds.http.aioserver), and the
caps are chosen so that everything fits:

    metadata cap + its headroom + control cap + its headroom + SPARE <= RLIMIT_NOFILE

A listener's *headroom* is what it may hold past its cap for a moment. The accept loop
(imds.http.acceptor) makes room for each connection it gives the event loop before taking the
next, by closing the idlest one; but the event loop lets go of a closed connection's
descriptor only on its next turn. Those closes in flight (`CappedServer.held`) are what
the headroom holds: a whole accept batch of them. The accept loop takes no connection
while held is at cap + headroom, so the sum above is a bound, not an estimate.

The control listener's cap is small and fixed (imds.lab.control), and the metadata listener
gets the rest: however the control port is flooded, it cannot take a descriptor the
metadata port counts on.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from imds.http.acceptor import BATCH

log = logging.getLogger("imds.httpd")

# Descriptors kept for what is not a connection: listening sockets, the event loop's own
# (epoll, wake-up pipe, signals), the log, the state directory, the STS client's pool.
SPARE = 64

# The most a listener holds past its cap: one accept batch's closes in flight.
HEADROOM = BATCH


def headroom(cap: int) -> int:
    """What a listener with `cap` connections may hold past it (see the module)."""
    return min(HEADROOM, cap)


@dataclass(frozen=True, slots=True)
class Budget:
    """Connection caps that fit under the open-file limit together."""

    metadata: int
    control: int


def share(metadata: int, control: int = 0) -> Budget:
    """
    Raise the soft RLIMIT_NOFILE towards the hard limit so both caps fit, and return the
    caps that do: the control listener's as asked (it is small), the metadata listener's
    cut to what is left, with a warning. `control` 0 means no control listener.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserved = control + headroom(control) + SPARE
    need = metadata + headroom(metadata) + reserved
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return Budget(metadata, control)
    fits = max(1, soft - reserved - HEADROOM)
    log.warning("only %d connections fit under the open file limit (%d); capping there",
                fits, soft)
    return Budget(fits, control)
