"""Tool-call parsing: the records, the `ToolParser` base and the registry the server looks parsers up in.

Every parser is a streaming parser. The text is scanned left to right; wherever a call block may
begin (a marker such as `<tool_call>`) the parser's `_match` answers "a block with these calls
ends here", "not a call" (None) or "can't tell yet" (HOLD). Text before an undecided block goes
out as content at once; the undecided block and what follows it are held back; a decided piece
is never revisited. `_match` answers definitely only when no continuation of the text could
change the answer, so nothing emitted ever needs retracting; and `extract_tool_calls` is the
same machine fed the whole reply in one piece, so the two paths differ only in where the text
was cut (tests/test_tool_parsers.py cuts it every which way). Besides a possible marker, only
trailing whitespace is held back (see `_say`).

The price of "never retract": a call is emitted (index, name and its complete arguments, in one
delta) once its block has parsed, because until then it may still turn out malformed, and a
malformed block is content, character for character.

Content is the text outside call blocks, the whitespace right after a block counting as part of
the block; a reply with calls also loses its content's trailing whitespace (None if nothing is
left). A reply without calls is content exactly as generated.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import partial_json_parser

from octavo.server.plugins import ParserRegistry


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object, json.dumps(args, ensure_ascii=False)


@dataclass(slots=True)
class ExtractedToolCalls:
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


@dataclass(slots=True)
class DeltaToolCall:
    """One streamed call; the server adds the OpenAI id (`call_...`) and type to the first delta of an index."""
    index: int
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class DeltaMessage:
    content: str | None = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)


class _Hold:
    def __repr__(self) -> str:
        return "HOLD"


HOLD = _Hold()  # `_match`: the text so far can still become a call block or not
Found = tuple[int, list[ToolCall]] | None | _Hold  # (index after the block, its calls) | not a call | HOLD


class ToolParser:
    """Finds tool calls in one request's generated text, streamed (`extract_tool_calls_streaming` per
    delta, then `finish`) or whole (`extract_tool_calls`). One instance per request.

    A subclass names where blocks may begin and says what a block is:
      markers        -- strings that may begin a call block anywhere
      start_markers  -- strings that begin one only at the start of the reply (after whitespace)
      _match(text, i, marker, end) -- text[i:] starts with `marker`; return (stop, calls), None or HOLD.
                        `end` is True once the reply is complete (HOLD then counts as None).
    """
    skip_special_tokens: ClassVar[bool] = True  # False: the markers are special tokens, keep them in the text
    markers: ClassVar[tuple[str, ...]] = ()
    start_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tools: list[dict] | None = None):
        self.tools = tools or []
        # A call to a function the request never declared is not a call (it stays content);
        # without declared tools (a parser used on its own) every name counts.
        self._declared = {t["function"]["name"] for t in self.tools if isinstance(t.get("function"), dict)}
        self._buf = ""       # undecided text: a possible call block and everything after it
        self._blank = ""     # trailing whitespace of the content, held: a reply with calls drops it
        self._spoke = False  # non-whitespace content has gone out
        self._after_call = False  # the last thing decided was a call block
        self._calls = 0      # calls emitted so far, the next call's index

    def _match(self, text: str, i: int, marker: str, end: bool) -> Found:
        raise NotImplementedError

    @classmethod
    def structural_tag(cls, tools: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The call format as a structural tag ({"triggers", "structures": [{"begin", "schema",
        "end"}]}) for `tools` (name -> parameters schema), so that strict tools' calls are
        constrained under tool_choice "auto"; None when the format has none."""
        return None

    def extract_tool_calls(self, model_output: str) -> ExtractedToolCalls:
        """The whole reply: the stream fed in one piece (on a fresh instance), so both paths agree."""
        fresh = type(self)(self.tools)
        deltas = [d for d in (fresh.extract_tool_calls_streaming(model_output), fresh.finish()) if d]
        calls = [ToolCall(c.name, c.arguments) for d in deltas for c in d.tool_calls]
        content = "".join(d.content or "" for d in deltas)
        return ExtractedToolCalls(bool(calls), calls, content or None)

    def extract_tool_calls_streaming(self, delta_text: str) -> DeltaMessage | None:
        """What `delta_text` decides: content that can no longer start a call, and calls whose block parsed."""
        self._buf += delta_text
        return self._step(end=False)

    def finish(self) -> DeltaMessage | None:
        """End of generation: every held-back piece is decided (an unfinished block is content)."""
        return self._step(end=True)

    @property
    def _at_start(self) -> bool:
        return not self._spoke and not self._calls

    def _step(self, end: bool) -> DeltaMessage | None:
        text, pos, content, calls = self._buf, 0, [], []
        while True:
            hit = self._find(text, pos)
            i = len(text) if hit is None else hit[0]
            content.append(self._say(text[pos:i]))
            if hit is None:
                pos = i
                break
            found = HOLD if hit[1] is None else self._match(text, i, hit[1], end)
            if isinstance(found, tuple) and not self._all_declared(found[1]):
                found = None
            if found is HOLD and not end:
                pos = i
                break
            if isinstance(found, tuple):
                pos, new = found
                calls += [DeltaToolCall(self._calls + n, c.name, c.arguments) for n, c in enumerate(new)]
                self._calls += len(new)
                self._after_call = True
            else:  # not a call: its first character is content, look for the next marker after it
                content.append(self._say(text[i]))
                pos = i + 1
        self._buf = text[pos:]
        if end:
            if not self._calls:
                content.append(self._blank)  # without calls the content is the whole text
            self._blank = ""
        content_text = "".join(content)
        if not content_text and not calls:
            return None
        return DeltaMessage(content_text or None, calls)

    def _all_declared(self, calls: list[ToolCall]) -> bool:
        return not self._declared or all(c.name in self._declared for c in calls)

    def _say(self, text: str) -> str:
        """Content to emit now. Trailing whitespace waits for non-whitespace after it: at the end of a
        reply with calls it is dropped."""
        if self._after_call:  # whitespace right after a call block belongs to the block
            text = text.lstrip()
            self._after_call = not text
        text = self._blank + text
        keep = len(text.rstrip())
        self._blank = text[keep:]
        self._spoke = self._spoke or keep > 0
        return text[:keep]

    def _find(self, text: str, pos: int) -> tuple[int, str | None] | None:
        """The first place at or after pos where a block may begin: (index, marker), or (index, None)
        where the text ends in a proper prefix of a marker."""
        hits = [hit for m in self.markers if (hit := _find_marker(text, pos, m))]
        if self._at_start:
            first = skip_ws(text, pos)
            hits += [hit for m in self.start_markers if (hit := _marker_at(text, first, m))]
        return min(hits, key=lambda h: (h[0], h[1] is None), default=None)


def _marker_at(text: str, i: int, marker: str) -> tuple[int, str | None] | None:
    if text.startswith(marker, i):
        return i, marker
    return (i, None) if i < len(text) and marker.startswith(text[i:]) else None


def _find_marker(text: str, pos: int, marker: str) -> tuple[int, str | None] | None:
    i = text.find(marker, pos)
    if i >= 0:
        return i, marker
    for i in range(max(pos, len(text) - len(marker) + 1), len(text)):
        if marker.startswith(text[i:]):
            return i, None
    return None


# ------------------------------------------------------------------ helpers for `_match` methods

_WS = re.compile(r"\s*")


def skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # NaN and Infinity are not JSON
# Checking that an unfinished value is still a JSON prefix costs ~40 us/KB each delta; past this many
# characters a block waits for its end (or finish()) to be found malformed instead of saying so early.
_EARLY_NONE_LIMIT = 4096


def json_at(text: str, pos: int, end: bool, openers: str = "{[") -> tuple[Any, int] | None | _Hold:
    """The JSON object/array at text[pos:] (after whitespace): (value, index after it); HOLD while the
    text so far is a prefix of valid JSON (partial-json-parser decides), else None."""
    j = skip_ws(text, pos)
    if j == len(text):
        return HOLD
    if text[j] not in openers:
        return None
    try:
        return _DECODER.raw_decode(text, j)
    except ValueError:
        pass
    if end:
        return None
    if len(text) - j > _EARLY_NONE_LIMIT:
        return HOLD
    try:
        partial_json_parser.loads(text[j:], partial_json_parser.ALL)
    except Exception:  # it raises several kinds (MalformedJSON, JSONDecodeError, IndexError)
        return None
    return HOLD


def expect(text: str, pos: int, closer: str, end: bool) -> int | None | _Hold:
    """The index after `closer` when it follows pos (after whitespace). At the end of the reply a
    missing or cut-off closer is forgiven (a stop string may have eaten it)."""
    j = skip_ws(text, pos)
    if text.startswith(closer, j):
        return j + len(closer)
    if closer.startswith(text[j:]):
        return len(text) if end else HOLD
    return None


def close(text: str, pos: int, calls: list[ToolCall] | None, closer: str | None, end: bool) -> Found:
    """A block of `calls` whose content ended at pos, finished by `closer` (None: nothing closes it)."""
    if not calls:
        return None
    if closer is None:
        return pos, calls
    stop = expect(text, pos, closer, end)
    return stop if stop is None or stop is HOLD else (stop, calls)


def json_block(text: str, pos: int, end: bool, closer: str | None = None) -> Found:
    """A block that is one call object, or a list of them, at text[pos:] and then `closer`."""
    found = json_at(text, pos, end)
    if found is None or found is HOLD:
        return found
    return close(text, found[1], calls_from_json(found[0]), closer, end)


def arguments_json(value: Any) -> str | None:
    """The one normalisation of arguments: json.dumps of the object, unicode as is."""
    if isinstance(value, str):  # some models send the arguments object as a JSON string
        try:
            value = _DECODER.decode(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # inf from 1e999, or a Python value with no JSON form
        return None


def call_from_json(obj: Any, require_args: bool = False) -> ToolCall | None:
    """`{"name": str, "arguments" or "parameters": object}`; without arguments the call takes `{}`
    unless `require_args`."""
    if not isinstance(obj, dict) or not isinstance(name := obj.get("name"), str) or not name:
        return None
    key = next((k for k in ("arguments", "parameters") if k in obj), None)
    if key is None:
        return None if require_args else ToolCall(name, "{}")
    args = arguments_json(obj[key])
    return None if args is None else ToolCall(name, args)


def calls_from_json(value: Any) -> list[ToolCall] | None:
    """One call object or a non-empty list of them; None unless every one is a call."""
    calls = [call_from_json(item) for item in (value if isinstance(value, list) else [value])]
    return calls if calls and None not in calls else None


# ------------------------------------------------------------------ registry


class ToolParserManager(ParserRegistry):
    """Name -> parser class. `--tool-call-parser NAME` picks one; `--tool-parser-plugin FILE` adds some."""
    base = ToolParser
    kind = "tool parser"
