"""The one exception type for mistakes a user can make and fix."""


class PotstillError(Exception):
    """A user-caused error: bad path, bad config key, malformed row, vocab mismatch.

    The message names the problem and the fix in one line; the CLI prints it without a
    traceback and exits with code 2.
    """
