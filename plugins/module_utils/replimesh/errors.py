"""The one error class of the core: its message is the line the operator reads."""


class ReplimeshError(Exception):
    """Something the operator has to fix; str(error) says what and how."""


class ConfigError(ReplimeshError):
    """The node's config or peer list is missing or malformed."""


class Unreachable(ConfigError):
    """A peer that SSH could not reach (refused, timed out, no route): down, or cut off,
    rather than failing; a round records it as unreachable."""
