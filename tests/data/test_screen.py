"""The quick screen of `data validate` passes only what the exact checks pass silently, with the same counts."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import REPO
from yayi_cli.core.prompt import MARKERS
from yayi_cli.core.reader import LineChunk, chunk_records
from yayi_cli.data.screen import MARKER_START, screen_lines
from yayi_cli.data.tally import Tally


EXAMPLES = REPO / "examples"
TRICKY_PIECES = [
    "【媒宣领域任务】", "【", "】", "数据", "a", " ", "\u3000", "\n", "\t", "\r", "\x00", "\x07", "\x7f", "\x85", "\u2028",
    ":", '":', '"', "\\", "<|", "<|End|>", "<|Human|>", "\ud800", "😀",
]
PLAIN_PIECES = ["【媒宣领域任务】", "【", "】", "数据", "模型", "a", "b", "，", "\\"]
plain_text = st.lists(st.sampled_from(PLAIN_PIECES), min_size=1, max_size=6).map(" ".join)
tricky_text = st.lists(st.sampled_from(TRICKY_PIECES), max_size=6).map("".join)
text = st.one_of(plain_text, plain_text, plain_text, tricky_text)
odd_value = st.one_of(st.none(), st.integers(), st.lists(text, max_size=2), st.dictionaries(text, text, max_size=2))


@st.composite
def record(draw: st.DrawFn) -> dict:
    """Mostly plain instruction records; now and then a wrong type, an unknown key, another shape,
    or a preference record (a pair, or a labelled completion, with or without the output)."""
    fields = {"instruction": draw(text), "output": draw(text)}
    for name in draw(st.sets(st.sampled_from(["input", "system", "id"]))):
        fields[name] = draw(text)
    odd = draw(st.integers(0, 11))
    if odd == 0:
        fields["output"] = draw(odd_value)
    elif odd == 1:
        fields[draw(st.sampled_from(["source", "conversations"]))] = draw(text)
    elif odd == 2:
        fields.update(chosen=draw(text), rejected=draw(st.one_of(text, st.just(fields["output"]))))
    elif odd == 3:
        fields.update(completion=draw(text), label=draw(st.one_of(st.booleans(), odd_value)))
    if odd in (2, 3) and draw(st.booleans()):
        del fields["output"]
    return fields


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    """Records written the ways people write them: ASCII-escaped or not, spaced or not, with a key
    written twice now and then, a blank or broken line."""
    lines = []
    for value in draw(st.lists(record(), min_size=1, max_size=8)):
        separators = draw(st.sampled_from([(", ", ": "), (",", ":"), (", ", " : "), (",", "\t:")]))
        line = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=separators)
        if draw(st.integers(0, 5)) == 0:
            line = line[:-1] + ', "output": "again"}'
        if draw(st.integers(0, 9)) == 0:
            line = draw(st.sampled_from(["", "   ", "{broken", line[:-1]]))
        lines.append(line)
    return ("\n".join(lines) + draw(st.sampled_from(["\n", "\r\n", ""]))).encode("utf-8", "surrogatepass")


def _state(tally: Tally) -> dict:
    return {
        "files": tally.files, "domains": +tally.domains, "counts": tally.counts, "problems": tally.problems,
        "first_of_kind": tally.first_of_kind,
        "keys": (list(tally.prompt_keys), list(tally.answer_keys)),
        "lines": [(ordinal, ordinal + offset) for ordinal, offset in zip(tally.run_starts, tally.run_offsets)],
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_lines())
def test_screened_counting_equals_the_exact_checks(data: bytes) -> None:
    chunk = LineChunk("data.jsonl", 1, data)
    exact, screened = Tally(100), Tally(100)
    exact.file(chunk.path), screened.file(chunk.path)  # as validate lists every file
    for _ in exact.check(chunk_records(chunk)):
        pass
    screened.count_lines(chunk)
    assert _state(screened) == _state(exact)


def test_the_screen_takes_plain_records_and_leaves_the_rest_to_the_exact_checks() -> None:
    lines = [
        json.dumps({"instruction": "【金融风控领域任务】问", "input": "文", "output": "答"}, ensure_ascii=False).encode(),
        json.dumps({"instruction": "问", "output": "答", "system": "你是", "id": 7}, ensure_ascii=False).encode(),
        b'{"instruction": "q", "output": "a", "output": "b"}',  # a key twice
        b'{"instruction": "q", "output": "12:30"}',  # a colon in the text: the exact checks decide
        b'{"instruction": "q", "output": "a "}',  # whitespace warning
        b'{"instruction": "q", "input": null, "output": "a"}',
        b'{"conversations": [{"from": "human", "value": "q"}, {"from": "yayi", "value": "a"}]}',
        b"",
    ]
    screened = screen_lines(lines)
    assert [record is not None for record in screened.records] == [True, True] + [False] * 6
    assert dict(screened.domains) == {"金融风控领域任务": 1, "": 1}
    assert screened.characters == len("【金融风控领域任务】问") + 1 + 1 + 1 + 1


def test_preference_records_are_left_to_the_exact_checks() -> None:
    lines = [line for name in ("preference.jsonl", "feedback.jsonl") for line in (EXAMPLES / name).read_bytes().splitlines()]
    assert len(lines) == 9 and screen_lines(lines).records == [None] * 9


def test_a_marker_anywhere_sends_every_record_of_the_lines_to_be_looked_at_alone() -> None:
    lines = [b'{"instruction": "q", "output": "a"}', b'{"instruction": "q <|End|>", "output": "a"}']
    assert [record is not None for record in screen_lines(lines).records] == [True, False]


def test_every_marker_begins_with_what_the_screen_looks_for() -> None:
    assert all(marker.startswith(MARKER_START) for marker in MARKERS)


def test_a_deeply_nested_id_is_left_to_the_exact_checks() -> None:
    deep = b'{"instruction": "q", "output": "a", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert screen_lines([deep]).records == [None]
