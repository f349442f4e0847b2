"""The one exception type cnnlab raises for bad input: a paragraph a user can act on."""

import textwrap


class CnnlabError(Exception):
    """Bad input (config, data, numerics, logger) explained in one paragraph.

    The message says what was wrong, what was expected and what to do. The CLI
    prints it without a traceback and exits non-zero (set CNNLAB_DEBUG=1 for
    the traceback).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(textwrap.dedent(message).split()))
