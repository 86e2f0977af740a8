"""Errors the CLI turns into exit code 2 and one clear line (never a traceback)."""

import reprlib

# A value is shown small and bounded, whatever it is (a YAML alias bomb would make repr() itself
# take exponential time and memory).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 78, 78, 40


def shown(value: object) -> str:
    """``repr(value)``, bounded in time and length, on one line."""
    text = _REPR.repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


class UserError(Exception):
    """Bad input from the user: a value, a file, a flag. The message is shown as-is."""


class ConfigError(UserError):
    """A values key/value is wrong. ``where`` is ``file:line`` when it came from YAML."""

    def __init__(self, key: str, value: object, why: str, where: str | None = None):
        self.key, self.value, self.why, self.where = key, value, why, where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}={shown(value)}: {why}")
