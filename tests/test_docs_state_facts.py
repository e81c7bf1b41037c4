"""Docs and comments state what holds, dated by commit and date, never by the order of the work.

A phrase like "the ninth session", "run 3 of", "shipped until then" or "in an earlier run" dates a
fact by a story the reader never saw; `docs/benchmarks.md` says "66b4ab2, 2026-11-26" instead.
This scans the prose and comments of docs/, kernels/, scripts/, benchmarks/, src/, tests/ and conf/
for such phrases.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("docs", "kernels", "scripts", "benchmarks", "src", "tests", "conf")
SUFFIXES = {".md", ".py", ".sh", ".cu", ".cuh", ".yaml", ".txt"}

_ORDINAL = (
    r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth"
    r"|\d+(?:st|nd|rd|th))"
)
_LATE_ORDINAL = r"(?:fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth)"
_WORK_UNIT = r"(?:sessions?|runs?|versions?|measurements?|attempts?|drafts?|revisions?)"

# Each pattern names one way of dating a fact by the order of the work.
STORY_PATTERNS = {
    "a session by its place (this/next/ninth session)": (
        rf"\b(?:this|that|next|previous|prior|last|earlier|later|same|{_ORDINAL})"
        r"(?:\s+\w+)?\s+sessions?\b"
    ),
    "a numbered session": r"\bsessions?\s+\d+\b",
    "a late ordinal standing for a session (the ninth's runs, until the ninth)": (
        rf"\b{_LATE_ORDINAL}(?:'s|\s+(?:runs?|sittings?|rounds?|iterations?)\b)"
    ),
    "a numbered run (run 3 of, in run 5, runs 1 / 2, run 4's)": (
        r"\b(?:in|from|since|after|before|until|of)\s+runs?\s+\d+\b"
        r"|\bruns?\s+\d+(?:\s+of\b|'s\b|:|[.,;]?\))"
        r"|\bruns?\s+\d+(?:\s*(?:/|,|and|to|-|–)\s*\d+)+"
    ),
    "until then / shipped until": r"\buntil then\b|\b(?:shipped|default|used)\s+until\b",
    "previously (shipped, measured, ...)": (
        r"\bpreviously\b(?!\s+(?:compiled|cached|computed|loaded|staged|allocated|stored|seen)\b)"
    ),
    "an earlier session/run/version": rf"\bearlier\s+{_WORK_UNIT}\b",
    "the first/old version": r"\b(?:the|its) (?:first|old|previous|earlier) version\b",
    "the next GPU run": r"\bthe next (?:GPU |gpu_check |gpu_check\.sh )?run\b",
}
_STORY = re.compile("|".join(f"(?:{p})" for p in STORY_PATTERNS.values()), re.IGNORECASE)


def story_phrases(text: str) -> list[str]:
    """The phrases of ``text`` that date a fact by the order of the work."""
    return [m.group(0) for m in _STORY.finditer(text)]


_CONTINUATION = re.compile(r"^\s*(?://+|#+|\*|--)?\s*")


def _joined_lines(text: str):
    """Each line with the next one appended (comment markers stripped), so that a phrase broken
    across a line ending is still seen; ``cut`` is where the line itself ends."""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        following = lines[number] if number < len(lines) else ""
        yield number, line + " " + _CONTINUATION.sub("", following), len(line)


def _files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            # this file quotes the phrases it looks for
            if path.suffix in SUFFIXES and path.is_file() and path != Path(__file__).resolve():
                yield path


def test_the_tree_dates_facts_by_commit_not_by_the_order_of_the_work():
    found = []
    for path in _files():
        for number, joined, cut in _joined_lines(path.read_text(encoding="utf-8")):
            found += [
                f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r}"
                for m in _STORY.finditer(joined)
                if m.start() < cut
            ]
    assert not found, (
        "these lines date a fact by the order of the work; state it with its commit and date "
        "(e.g. '66b4ab2, 2026-11-26') or drop it (git history keeps the story):\n"
        + "\n".join(found)
    )


@pytest.mark.parametrize(
    "phrase",
    [
        "every target is met since the ninth session (66b4ab2)",
        "measured in this session on an H100",
        "the next session should profile it",
        "the fifth to eighth sessions",
        "H100 rows: run 3 of the fifth",
        "0.486 ms in run 5",
        "the one-call timer (docs/benchmarks.md, run 5.)",
        "runs 1 / 2, three stages",
        "Run 4's targets are met",
        "8 x 8 (shipped until the ninth)",
        "8 x 8 was the default until the tiles were measured",
        "until then the forward ran at 50%",
        "the previously shipped tile",
        "An earlier run of the ops alone",
        "The first version loaded A element by element",
        "the next gpu_check.sh run will say",
    ],
)
def test_story_phrases_are_caught(phrase):
    assert story_phrases(phrase)


@pytest.mark.parametrize(
    "sentence",
    [
        "run 2 epochs on the toy set, then run the tests",
        "each thread issues its copies back to back and none waits for the previous one",
        "for (int step = 0; step < STEPS; ++step)  // the first run of the loop compiles",
        "the tile's first chunks are staged before the masks load",
        "pytest's session-scoped fixture composes the config once",
        "the released SAPA implementation, version 1.0 (run 3 seeds and average)",
        "copy the previously staged chunk",
        "a run stopped part way keeps the rows it measured",
    ],
)
def test_ordinary_words_pass(sentence):
    assert story_phrases(sentence) == []
