"""JSON Schema ``pattern``: the regular expressions the decoder and the validator read alike.

Two engines read a pattern: llguidance turns it into the grammar that decoding follows (Rust's
regex syntax, ``\\d`` and ``\\w`` read as ASCII), and jsonschema (Python's ``re``) validates the
result. Only the subset both read the same way is accepted; a completed output must always
validate. The decoder matches the whole string (``model.constrained`` anchors the pattern at
both ends), the validator searches in it, so whatever the decoder writes the validator accepts.
Supported: literals, ``.``, classes ``[…]`` and ``[^…]``, the escapes ``\\d \\w \\s``,
``\\t \\n \\r \\f \\v``, ``\\xHH``, ``\\uHHHH`` and escaped punctuation, groups ``(…)`` and
``(?:…)``, ``|``, the repeats ``* + ? {n} {n,} {n,m}`` (also lazy), and ``^`` / ``$`` at the ends
of the pattern or of a top-level alternative. The decoder writes no escapes in strings, so it
never writes ``"``, ``\\`` or a control character, even where a pattern allows one. Refused,
each with the reason: backreferences, lookaround, flags, word boundaries, Unicode property
classes, and ``\\D \\W \\S`` (the decoder and the validator class non-ASCII characters
differently: they would let the decoder write characters the validator rejects).

The bound that makes decoding end goes into the pattern itself, so the pattern alone says how
long the string can be: every open-ended repeat (``*``, ``+``, ``{n,}``) gets an upper bound, the
largest that keeps the longest match within the string's limit, and ``minLength``/``maxLength``
must agree with the pattern's matches.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

__all__ = ["PatternError", "bound_pattern", "build_pattern_example", "pattern_max_length"]

# Repeat counts above this make large automata for little use.
MAX_REPEAT = 1000

_CLASS_ESCAPES = "dws"
_CONTROL_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v"}
_CONTROL_ESCAPES_TEXT = {f"\\{k}": v for k, v in _CONTROL_ESCAPES.items()}
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


class PatternError(ValueError):
    """A pattern outside the supported subset; the message says why, without a location."""


@dataclass(frozen=True)
class _Atom:
    """One character: a literal, ``.``, an escape or a class."""

    text: str


@dataclass(frozen=True)
class _Anchor:
    text: str


@dataclass(frozen=True)
class _Group:
    opener: str
    alternatives: tuple[tuple[_Node, ...], ...]


@dataclass(frozen=True)
class _Repeat:
    node: _Atom | _Group
    low: int
    high: int | None  # None: open-ended
    lazy: bool
    quantifier: str  # as written, lazy "?" included


_Node = _Atom | _Anchor | _Group | _Repeat


def bound_pattern(
    pattern: str, *, min_length: int | None, max_length: int | None, default_max_length: int
) -> tuple[str, int]:
    """The pattern with every open-ended repeat bounded, and the longest string it matches.

    Open-ended repeats get the largest common upper bound that keeps the longest match within
    ``max_length`` (or ``default_max_length``). A pattern without open-ended repeats is kept as
    written. Raises ``PatternError`` for a pattern outside the subset, or one whose matches the
    user's ``minLength``/``maxLength`` would not all allow.
    """
    tree = _Parser(pattern).parse()
    if not any(_open_ended(node) for branch in tree for node in branch):
        bounded, (low, high) = pattern, _width_of(tree, 0)
    else:
        limit = max_length if max_length is not None else default_max_length
        fewest = _width_of(tree, 1)[1]
        if fewest > limit and max_length is None:
            limit = fewest
        best, lo, hi = 1, 1, limit
        while lo <= hi:  # the largest bound whose longest match fits the limit
            mid = (lo + hi) // 2
            if _width_of(tree, mid)[1] <= limit:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        bounded = _render_alternatives(tree, best)
        low, high = _width_of(tree, best)
    if max_length is not None and high > max_length:
        raise PatternError(
            f"it allows strings longer than maxLength ({max_length}); bound the pattern's "
            f"repeats instead (for example {{1,{max_length}}})"
        )
    if min_length is not None and low < min_length:
        raise PatternError(
            f"it allows strings shorter than minLength ({min_length}); require the length in "
            "the pattern instead"
        )
    return bounded, high


def pattern_max_length(pattern: str) -> int:
    """The longest string (in characters) a pattern without open-ended repeats matches.

    Open-ended repeats (not in a bounded pattern) count as one repetition.
    """
    return _width_of(_Parser(pattern).parse(), 1)[1]


def build_pattern_example(pattern: str, *, longest: bool = False) -> str:
    """A string the pattern matches: a short one (the first alternative, each repeat at its
    minimum), or with ``longest`` one of the longest (open-ended repeats taken once)."""
    return _example_of(_Parser(pattern).parse(), longest)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> tuple[tuple[_Node, ...], ...]:
        tree = self._alternatives(top=True)
        if self.pos != len(self.text):
            raise PatternError("it has an unbalanced parenthesis")
        return tree

    def _peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else ""

    def _alternatives(self, *, top: bool) -> tuple[tuple[_Node, ...], ...]:
        branches = [self._sequence(top=top)]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence(top=top))
        return tuple(branches)

    def _sequence(self, *, top: bool) -> tuple[_Node, ...]:
        nodes: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            char = self._peek()
            if char == "^":
                if not (top and not nodes):
                    raise PatternError("^ is only supported at the start of the pattern")
                self.pos += 1
                nodes.append(_Anchor("^"))
                continue
            if char == "$":
                self.pos += 1
                if not (top and self._peek() in ("", "|")):
                    raise PatternError("$ is only supported at the end of the pattern")
                nodes.append(_Anchor("$"))
                continue
            nodes.append(self._quantified(self._atom()))
        return tuple(nodes)

    def _atom(self) -> _Atom | _Group:
        char = self._peek()
        if char == "(":
            return self._group()
        if char == "[":
            return self._class()
        if char == "\\":
            return _Atom(self._escape(negated_class=False))
        if char in "*+?":
            raise PatternError(f"{char} has nothing to repeat")
        if char in "{}]":
            raise PatternError(f"write \\{char} for a literal {char}")
        self.pos += 1
        return _Atom(char)

    def _group(self) -> _Group:
        opener = "(?:" if self.text.startswith("(?:", self.pos) else "("
        if opener == "(" and self._peek(1) == "?":
            construct = self.text[self.pos : self.pos + 4]
            raise PatternError(
                f"only (…) and (?:…) groups are supported, not {construct}… "
                "(lookaround, flags and named groups are not)"
            )
        self.pos += len(opener)
        alternatives = self._alternatives(top=False)
        if self._peek() != ")":
            raise PatternError("it has an unbalanced parenthesis")
        self.pos += 1
        return _Group(opener, alternatives)

    def _class(self) -> _Atom:
        start = self.pos
        self.pos += 1
        negated = self._peek() == "^"
        if negated:
            self.pos += 1
        if self._peek() == "]":
            raise PatternError("write \\] for a literal ] in a class")
        while self._peek() != "]":
            char = self._peek()
            if char == "":
                raise PatternError("a class [… is not closed")
            if char == "[":
                raise PatternError("write \\[ for a literal [ in a class")
            if char == "\\":
                self._escape(negated_class=negated)
            else:
                self.pos += 1
        self.pos += 1
        return _Atom(self.text[start : self.pos])

    def _escape(self, *, negated_class: bool) -> str:
        start = self.pos
        char = self._peek(1)
        self.pos += 2
        if not char:
            raise PatternError("it ends in \\")
        if char in _CLASS_ESCAPES:
            if negated_class:
                raise PatternError(
                    f"\\{char} inside [^…] is not supported: the decoder and the validator read "
                    f"\\{char} differently outside ASCII; list the characters instead"
                )
        elif char in _CLASS_ESCAPES.upper():
            raise PatternError(
                f"\\{char} is not supported: the decoder and the validator read it differently "
                "outside ASCII; write a class such as [^0-9] instead"
            )
        elif char in ("x", "u"):
            digits = 2 if char == "x" else 4
            code = self.text[self.pos : self.pos + digits]
            if len(code) != digits or any(c not in string.hexdigits for c in code):
                raise PatternError(f"\\{char} must be followed by {digits} hex digits")
            self.pos += digits
        elif char.isdigit():
            raise PatternError("backreferences are not supported")
        elif char in "bBAZzG":
            raise PatternError(f"\\{char} (a boundary or anchor escape) is not supported")
        elif char in "pP":
            raise PatternError("Unicode property classes (\\p, \\P) are not supported")
        elif char not in _CONTROL_ESCAPES and char not in string.punctuation:
            raise PatternError(f"the escape \\{char} is not supported")
        return self.text[start : self.pos]

    def _quantified(self, node: _Atom | _Group) -> _Atom | _Group | _Repeat:
        char, start = self._peek(), self.pos
        high: int | None
        if char in ("*", "+", "?"):
            self.pos += 1
            low, high = (1 if char == "+" else 0), (1 if char == "?" else None)
        elif char == "{":
            match = _QUANTIFIER.match(self.text, self.pos)
            if match is None:
                raise PatternError("write \\{ for a literal { (repeats are {n}, {n,} or {n,m})")
            self.pos = match.end()
            low = int(match.group(1))
            if match.group(2) is None:
                high = low
            else:
                high = int(match.group(3)) if match.group(3) else None
            if max(low, high or 0) > MAX_REPEAT:
                raise PatternError(f"repeat counts above {MAX_REPEAT} are not supported")
            if high is not None and high < low:
                raise PatternError(f"the repeat {match.group(0)} has its bounds reversed")
        else:
            return node
        lazy = self._peek() == "?"
        if lazy:
            self.pos += 1
        if self._peek() in ("*", "+", "?", "{"):
            raise PatternError("a repeat may not be repeated (nor possessive)")
        return _Repeat(node, low, high, lazy, self.text[start : self.pos])


def _open_ended(node: _Node) -> bool:
    if isinstance(node, _Repeat):
        return node.high is None or _open_ended(node.node)
    if isinstance(node, _Group):
        return any(_open_ended(n) for branch in node.alternatives for n in branch)
    return False


def _width_of(alternatives: tuple[tuple[_Node, ...], ...], bound: int) -> tuple[int, int]:
    widths = [_sequence_width(branch, bound) for branch in alternatives]
    return min(w[0] for w in widths), max(w[1] for w in widths)


def _sequence_width(nodes: tuple[_Node, ...], bound: int) -> tuple[int, int]:
    low = high = 0
    for node in nodes:
        a, b = _width(node, bound)
        low, high = low + a, high + b
    return low, high


def _width(node: _Node, bound: int) -> tuple[int, int]:
    if isinstance(node, _Atom):
        return 1, 1
    if isinstance(node, _Anchor):
        return 0, 0
    if isinstance(node, _Group):
        return _width_of(node.alternatives, bound)
    low, high = _width(node.node, bound)
    top = node.high if node.high is not None else max(node.low, bound)
    return node.low * low, top * high


def _render_alternatives(alternatives: tuple[tuple[_Node, ...], ...], bound: int) -> str:
    return "|".join("".join(_render(node, bound) for node in branch) for branch in alternatives)


def _render(node: _Node, bound: int) -> str:
    if isinstance(node, _Atom | _Anchor):
        return node.text
    if isinstance(node, _Group):
        return node.opener + _render_alternatives(node.alternatives, bound) + ")"
    if node.high is not None:
        return _render(node.node, bound) + node.quantifier
    top = max(node.low, bound)
    repeat = f"{{{node.low}}}" if top == node.low else f"{{{node.low},{top}}}"
    return _render(node.node, bound) + repeat + ("?" if node.lazy else "")


def _example_of(alternatives: tuple[tuple[_Node, ...], ...], longest: bool) -> str:
    branch = alternatives[0]
    if longest:
        branch = max(alternatives, key=lambda b: _sequence_width(b, 1)[1])
    return "".join(_example(node, longest) for node in branch)


def _example(node: _Node, longest: bool) -> str:
    if isinstance(node, _Anchor):
        return ""
    if isinstance(node, _Group):
        return _example_of(node.alternatives, longest)
    if isinstance(node, _Repeat):
        count = max(node.low, node.high or 1) if longest else node.low
        return _example(node.node, longest) * count
    text = node.text
    if len(text) == 1 and text != ".":
        return text
    if text.startswith("\\") and len(text) == 2 and text[1] in string.punctuation:
        return text[1]
    if text.startswith(("\\x", "\\u")):
        return chr(int(text[2:], 16))
    if text in _CONTROL_ESCAPES_TEXT:
        return _CONTROL_ESCAPES_TEXT[text]
    for candidate in string.ascii_letters + string.digits + " _-.,:/" + text:
        if re.fullmatch(text, candidate):
            return candidate
    raise PatternError(f"no example character found for {text}")
