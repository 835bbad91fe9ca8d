"""The one exception type the CLI turns into a one-line message and exit code 2."""


class CycleGANError(Exception):
    """A problem with the user's input (paths, images, checkpoints, flags), reported without a traceback."""


class TooLarge(CycleGANError):
    """An input beyond a limit (of pixels, or of memory even in tiles): the web server answers it with 413."""


def first_line(error: BaseException) -> str:
    """An exception as one line of text: decoders and torch often raise multi-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
