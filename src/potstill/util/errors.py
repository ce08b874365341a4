"""The one exception type for mistakes a user can make and fix."""


class PotstillError(Exception):
    """A user-caused error: bad path, bad config key, malformed row, vocab mismatch.

    The message names the problem and the fix in one line; the CLI prints it without a
    traceback and exits with code 2.
    """


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (at most 200 characters), or its type's name,
    for quoting a library's exception inside a one-line `PotstillError`.

    >>> first_line(ValueError("bad shape\\nat layer 3")), first_line(KeyError())
    ('bad shape', 'KeyError')
    """
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
