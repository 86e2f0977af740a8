"""Errors the CLI turns into exit code 2 and one clear line (never a traceback)."""


class UserError(Exception):
    """Bad input from the user: a value, a file, a flag. The message is shown as-is."""


class ConfigError(UserError):
    """A values key/value is wrong. ``where`` is ``file:line`` when it came from YAML."""

    def __init__(self, key: str, value: object, why: str, where: str | None = None):
        self.key, self.value, self.why, self.where = key, value, why, where
        prefix = f"{where}: " if where else ""
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{prefix}{key}={shown}: {why}")
