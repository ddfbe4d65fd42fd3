"""Is a process of this host alive? The one check behind every "dead owner" decision.

:mod:`dicom_node.liveness` uses it to find workers of this host that are gone
(their claims are recovered), :mod:`dicom_node.spool` to find temporary files
whose writer is gone (they are removed). It depends on nothing else in the
node, so :mod:`dicom_node.spool` (imported by the configuration's model store)
can use it without an import cycle.
"""

from __future__ import annotations

import os
import socket


def this_host() -> str:
    """Name of this host, as recorded with the node's workers."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with id `pid` exists on this host.

    A process owned by another user counts as alive; an id that does not
    exist (or is not positive) does not.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
