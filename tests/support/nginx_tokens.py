"""A small nginx config tokenizer/parser (the rules of ngx_conf_read_token) so tests can count
directives instead of grepping text: an injected ``;`` or ``}`` would show up as a new directive."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Directive:
    block: tuple[str, ...]  # enclosing block names, outermost first
    name: str
    args: tuple[str, ...]


def tokens(text: str) -> list[tuple[str, bool]]:
    """``(token, is_quoted)`` pairs; ``;``, ``{``, ``}`` are separate unquoted tokens."""
    out: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            out.append((c, False))
            i += 1
        elif c in "\"'":
            quote, buf, i = c, [], i + 1
            while i < n and text[i] != quote:
                if text[i] == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    buf.append({"t": "\t", "r": "\r", "n": "\n"}.get(nxt, nxt if nxt in "\"'\\" else "\\" + nxt))
                    i += 2
                    continue
                buf.append(text[i])
                i += 1
            if i >= n:
                raise ValueError("unterminated quoted string")
            out.append(("".join(buf), True))
            i += 1
        else:
            buf = []
            while i < n and not text[i].isspace() and text[i] not in ";{}":
                if text[i] == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                    continue
                buf.append(text[i])
                i += 1
            out.append(("".join(buf), False))
    return out


def parse(text: str) -> list[Directive]:
    """Every directive with its enclosing blocks (``map``/``upstream`` entries included)."""
    result: list[Directive] = []
    stack: list[str] = []
    current: list[str] = []
    for tok, quoted in tokens(text):
        if not quoted and tok == ";":
            if not current:
                raise ValueError("empty directive")
            result.append(Directive(tuple(stack), current[0], tuple(current[1:])))
            current = []
        elif not quoted and tok == "{":
            if not current:
                raise ValueError("block without a name")
            result.append(Directive(tuple(stack), current[0], tuple(current[1:])))
            stack.append(current[0])
            current = []
        elif not quoted and tok == "}":
            if current or not stack:
                raise ValueError("unbalanced '}'")
            stack.pop()
        else:
            current.append(tok)
    if current or stack:
        raise ValueError("unterminated directive or block")
    return result
