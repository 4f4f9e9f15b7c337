"""The project's one exception type.

Every error a user can cause (a bad file, a bad study file, an unreachable
database) is raised as `FerOptError` with a message that says what is wrong and
how to fix it. The CLI prints that message on one line and exits with status 2;
anything else escaping is a bug.
"""


class FerOptError(Exception):
    """A user-facing error: the message names the input and the fix."""

    exit_code = 2
