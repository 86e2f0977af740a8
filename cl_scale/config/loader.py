"""Load values the Helm way: YAML files merged left to right, then ``--set`` overrides.

Why line tracking: a user with three values files needs to know *which* line is wrong. Every key
remembers where it was last set (``file:line`` or ``--set a.b=c``), and a validation error is
reported against that origin as one line: ``file:line: key=value: why``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cl_scale.config.values import FieldError, Values
from cl_scale.errors import ConfigError, UserError

KeyPath = tuple[str | int, ...]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(text: object) -> str:
    """Errors are one line: control characters in a file name or --set are shown escaped."""
    text = str(text)
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)

# --------------------------------------------------------------------------- YAML with line marks


class LineLoader(yaml.SafeLoader):
    """SafeLoader that records the start line of every key (by key path) and rejects duplicate
    keys (plain PyYAML silently keeps the last one, hiding typos)."""

    def __init__(self, stream: str, filename: str):
        super().__init__(stream)
        self.filename = filename
        self.lines: dict[KeyPath, int] = {}
        self._visited: set[int] = set()

    def record(self, node: yaml.Node, path: KeyPath) -> None:
        # An aliased node is walked once, at its first path: re-walking every alias is exponential
        # (a 1 KB "billion laughs" document took minutes and gigabytes).
        if id(node) in self._visited:
            return
        self._visited.add(id(node))
        if len(path) > MAX_DEPTH:
            raise ConfigError(_dotted(path[:3]) + "...", "(nested)", f"nested deeper than {MAX_DEPTH} levels",
                              f"{self.filename}:{node.start_mark.line + 1}")
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:  # duplicates among the keys written here
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                    raise ConfigError(_dotted(path) if path else "(root)", _key_text(key_node),
                                      "keys must be plain names (a null, number, list or mapping is not a key)",
                                      f"{self.filename}:{key_node.start_mark.line + 1}")
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise ConfigError(_dotted(path + (key,)), "(duplicate)", "duplicate key",
                                      f"{self.filename}:{key_node.start_mark.line + 1}")
                seen.add(key)
            self.flatten_mapping(node)  # resolve "<<: *anchor" merges; later keys win
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int)):
                    self.lines[path + (key,)] = key_node.start_mark.line + 1
                    self.record(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self.record(item, path + (i,))


MAX_FILE_BYTES = 1024 * 1024  # a values file is a few KB; bound the parse (a 50 MB file took 153 s)
MAX_DEPTH = 20  # the schema is 4 levels deep; deeper is a mistake (and a recursion hazard)
MAX_SET_SEGMENTS = 20


def _key_text(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """Parse one values file: ``(data, {key_path: "file:line"})``."""
    if not path.exists():
        raise UserError(f"{_show(path)}: values file not found")
    if not path.is_file():
        raise UserError(f"{_show(path)}: values file is not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{_show(path)}: values file over {MAX_FILE_BYTES // 1024} KB")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{_show(path)}: cannot read values file ({_show(exc)})") from None
    loader = LineLoader(text, _show(path))
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        loader.record(node, ())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{_show(path)}:{mark.line + 1}" if mark else _show(path)
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{_show(path)}: YAML error: {' '.join(str(exc).split())[:200]}") from None
    except RecursionError:
        raise UserError(f"{_show(path)}: YAML nested too deeply (the values schema is a few levels deep)") from None
    except TypeError:  # a complex key (``? [a, b]``) cannot be a dict key
        raise UserError(f"{_show(path)}: YAML keys must be plain names (found a list or mapping used as a key)") \
            from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError("(root)", data, "a values file must be a mapping of keys",
                          f"{_show(path)}:{node.start_mark.line + 1}")
    return data, {k: f"{_show(path)}:{line}" for k, line in loader.lines.items()}


# --------------------------------------------------------------------------- merging


def deep_merge(base: dict, over: dict) -> dict:
    """Helm merge: mappings merge key by key; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _forget_below(origins: dict[KeyPath, str], path: KeyPath) -> None:
    for k in [k for k in origins if len(k) > len(path) and k[: len(path)] == path]:
        del origins[k]


# --------------------------------------------------------------------------- --set


_SEGMENT = re.compile(r"^((?:[^.\[\]\\=\s]|\\.)+)((?:\[[^\]]*\])*)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_MAX_INDEX = 1000


def parse_set_key(key: str, raw: str) -> KeyPath:
    """``a.b[0].c`` -> ``("a", "b", 0, "c")``; ``\\.`` keeps a literal dot (``nvidia\\.com/gpu``)."""
    if not key:
        raise UserError(f"--set {raw!r}: missing key before '=' (expected key=value)")
    parts, cur, i = [], "", 0
    while i < len(key):  # split on unescaped dots; bounded by len(key)
        if key[i] == "\\" and i + 1 < len(key):
            cur += key[i : i + 2]
            i += 2
            continue
        if key[i] == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += key[i]
        i += 1
    parts.append(cur)
    if len(parts) > MAX_SET_SEGMENTS:
        raise UserError(f"--set {_show(raw)[:60]!r}: key has {len(parts)} segments (max {MAX_SET_SEGMENTS})")
    path: list[str | int] = []
    for part in parts:
        m = _SEGMENT.match(part)
        if not m:
            raise UserError(f"--set {raw!r}: malformed key {key!r} (expected a.b.c or a[0].b)")
        path.append(re.sub(r"\\(.)", r"\1", m.group(1)))
        for idx in re.findall(r"\[([^\]]*)\]", m.group(2)):
            if not idx.isdigit():
                raise UserError(f"--set {raw!r}: list index [{idx}] must be a non-negative integer")
            if int(idx) > _MAX_INDEX:
                raise UserError(f"--set {raw!r}: list index {idx} is too large (max {_MAX_INDEX})")
            path.append(int(idx))
    return tuple(path)


def typed_value(text: str) -> Any:
    """Helm typing: true/false, null, ints (not with a leading 0), floats; quotes force a string."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):
        return None
    if _INT.match(text):
        digits = text.lstrip("+-")
        return text if len(digits) > 1 and digits[0] == "0" else int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_set(raw: str) -> tuple[KeyPath, Any]:
    if "=" not in raw:
        raise UserError(f"--set {raw!r}: expected key=value")
    key, _, value = raw.partition("=")
    return parse_set_key(key.strip(), raw), typed_value(value)


def apply_set(data: dict, path: KeyPath, value: Any) -> dict:
    """Set ``path`` in nested dicts/lists, creating containers (lists padded with null, as Helm)."""
    node: Any = data
    for i, step in enumerate(path):
        last = i == len(path) - 1
        nxt: Any = value if last else ({} if isinstance(path[i + 1], str) else [])
        if isinstance(step, int):
            while len(node) <= step:  # bounded: step <= _MAX_INDEX
                node.append(None)
            if last or not isinstance(node[step], type(nxt)):
                node[step] = nxt
            node = node[step]
        else:
            if last or not isinstance(node.get(step), type(nxt)):
                node[step] = nxt
            node = node[step]
    return data


# --------------------------------------------------------------------------- validation errors

_TYPE_WHY = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}


def _dotted(path: KeyPath) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "(root)"


def _model_at(path: KeyPath) -> type[BaseModel] | None:
    model: Any = Values
    for step in path:
        field = model.model_fields.get(step) if isinstance(step, str) else None
        if field is None:
            for f in model.model_fields.values():
                if f.alias == step:
                    field = f
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _why(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(tuple(err["loc"][:-1]))
        allowed = ", ".join(f.alias or n for n, f in model.model_fields.items()) if model else ""
        return f"unknown key (allowed here: {allowed})" if allowed else "unknown key"
    if kind in _TYPE_WHY:
        return _TYPE_WHY[kind]
    if kind == "literal_error":
        return "must be one of " + err["ctx"]["expected"].replace("'", "")
    msg = err["msg"]
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _where(path: KeyPath, origins: dict[KeyPath, str]) -> str | None:
    for n in range(len(path), 0, -1):
        if path[:n] in origins:
            return origins[path[:n]]
        # the key itself was defaulted: point at a sibling the user did set (the cause)
        near = [o for k, o in origins.items() if k[: n - 1] == path[: n - 1] and len(k) >= n]
        if near and n > 1:
            return near[-1]
    return None


def validate(data: dict, origins: dict[KeyPath, str] | None = None) -> Values:
    """Validate merged data; the first error becomes one :class:`ConfigError` line."""
    origins = origins or {}
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            path = tuple(int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", cause.key) if p != "")
            key, value, why = cause.key, cause.value, cause.why
        else:
            path = tuple(err["loc"])
            key, value, why = _dotted(path), err.get("input"), _why(err)
        more = len(errors) - 1
        if more:
            why += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ConfigError(_show(key), value, _show(why), _where(path, origins)) from None


def load_values(files: list[Path] | None = None, sets: list[str] | None = None) -> Values:
    """``-f`` files merged left to right, then ``--set`` items in order, then validated."""
    data: dict[str, Any] = {}
    origins: dict[KeyPath, str] = {}
    for f in files or []:
        loaded, lines = read_yaml(Path(f))
        for path in _top_paths(loaded):
            _forget_below(origins, path)
        data = deep_merge(data, loaded)
        origins.update(lines)
    for raw in sets or []:
        path, value = parse_set(raw)
        data = apply_set(data, path, value)
        _forget_below(origins, path)
        # The key only: the value is shown (redacted where it must be) by the error itself.
        origins[path] = f"--set {_show(raw.partition('=')[0].strip())}"
    return validate(data, origins)


def _top_paths(data: Any, path: KeyPath = ()) -> list[KeyPath]:
    """Paths whose value a merge replaces (non-mapping leaves): their old sub-origins are stale."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _top_paths(v, path + (k,))]
    return [path]


# --------------------------------------------------------------------------- documented cl-scale.yaml

HEADER = """\
# cl-scale.yaml: values for every cl-scale target (nginx, k8s, compose).
# Render with:  cl-scale render nginx|k8s|compose -f cl-scale.yaml [--set key=value] [--out DIR|-]
# Unknown keys and wrong types are errors. Secrets never go here: they live in the Secret named by
# auth.secretName (k8s) or in .env (compose).
"""


def documented_yaml(values: Values) -> str:
    """The full ``cl-scale.yaml``: every key with its current value and its description as a
    comment. Values are dumped with ``yaml.safe_dump`` so quoting is always right."""
    lines = [HEADER.rstrip("\n")]
    _emit(values, 0, lines)
    return "\n".join(lines).rstrip("\n") + "\n"


def _emit(model: BaseModel, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value = getattr(model, name)
        if indent == 0 and lines[-1] != "":
            lines.append("")
        for text in (field.description or "").splitlines():
            lines.append(f"{pad}# {text}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{key}:")
            _emit(value, indent + 2, lines)
            continue
        data = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
        dumped = yaml.safe_dump({key: data}, default_flow_style=False, sort_keys=False, width=10_000,
                                allow_unicode=True)
        lines.extend(pad + line for line in dumped.rstrip("\n").split("\n"))
