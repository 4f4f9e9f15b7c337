"""The project's one exception type.

Every error a user can cause (a bad file, a bad study file, an unreachable
database) is raised as `FerOptError` with a message that says what is wrong and
how to fix it, in the library's terms (the parameter or option to change). The CLI
prints that message on one line, with the command-line flag that makes the fix
(`flag`) or the environment variable that sets the option (`setting`), and exits
with status 2; anything else escaping is a bug.
"""


class FerOptError(Exception):
    """A user-facing error: the message names the input and the fix; `flag` is the fix's command-line flag,
    `setting` the option field that makes it (as "DataOptions.max_input_mb")."""

    exit_code = 2

    def __init__(self, message: str = "", *, flag: str | None = None, setting: str | None = None):
        super().__init__(message)
        self.flag, self.setting = flag, setting
