"""The one exception type the CLI turns into a one-line message and exit code 2."""


class CycleGANError(Exception):
    """A problem with the user's input (paths, images, checkpoints, flags), reported without a traceback."""
