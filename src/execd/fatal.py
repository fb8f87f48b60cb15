"""Start-up failures a person can fix: one line naming the cause and the config key.

`execd run` prints the line and exits 2; the traceback goes to the debug log only.
"""

from __future__ import annotations

import errno


class Fatal(Exception):
    pass


def address_problem(key: str, address: str, e: OSError) -> Fatal:
    """A listen that failed, said the way an operator fixes it."""
    if e.errno == errno.EADDRINUSE:
        return Fatal(f"{key} {address} is already in use")
    return Fatal(f"{key} {address}: cannot listen: {e.strerror or e}")
