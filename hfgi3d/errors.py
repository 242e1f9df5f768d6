"""The error a command answers with one line and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Something the user gave is wrong; the message names it and says what to do.

    The command line prints it as one line (``error: …``) and exits with code 2; ``--debug``
    (or ``HFGI3D_DEBUG=1``) shows the traceback instead.
    """
