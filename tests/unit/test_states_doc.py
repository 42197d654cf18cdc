"""docs/states.md draws exactly `errand.jobs.TRANSITIONS`, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from errand.jobs import TRANSITIONS, Outcome, State

DOC = Path(__file__).resolve().parents[2] / "docs" / "states.md"
ARROW = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\w+)\s*(?::\s*(.*?))?\s*$")


def mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"^```mermaid\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def diagram_arrows() -> list[tuple[str, str, str]]:
    """(from, to, label) of every arrow between two states; start markers `[*]` left out."""
    blocks = mermaid_blocks(DOC.read_text("utf-8"))
    assert len(blocks) == 1, f"expected one mermaid block in {DOC}, found {len(blocks)}"
    lines = blocks[0].splitlines()
    assert lines[0].strip() == "stateDiagram-v2"
    arrows = []
    for line in lines:
        if "-->" not in line:
            continue
        match = ARROW.match(line)
        assert match, f"unparsed arrow line in {DOC.name}: {line!r}"
        source, target, label = match.groups()
        if source != "[*]":
            arrows.append((source, target, label or ""))
    return arrows


def test_diagram_arrows_are_exactly_the_transitions() -> None:
    drawn = {(source, target) for source, target, _ in diagram_arrows()}
    table = {(source.value, target.value) for source, target in TRANSITIONS}
    assert sorted(drawn - table) == [], "drawn in docs/states.md but not in TRANSITIONS"
    assert sorted(table - drawn) == [], "in TRANSITIONS but not drawn in docs/states.md"


def test_diagram_draws_each_transition_once() -> None:
    pairs = [(source, target) for source, target, _ in diagram_arrows()]
    assert len(pairs) == len(set(pairs))


def test_diagram_labels_are_the_causes_in_the_table() -> None:
    for source, target, label in diagram_arrows():
        assert label == TRANSITIONS[(State(source), State(target))], (source, target)


def test_diagram_starts_only_in_wait_dependencies_or_pending() -> None:
    (block,) = mermaid_blocks(DOC.read_text("utf-8"))
    starts = {m.group(2) for line in block.splitlines() if (m := ARROW.match(line))
              and m.group(1) == "[*]"}
    assert starts == {State.WAIT_DEPENDENCIES.value, State.PENDING.value}


def test_page_explains_every_state_and_outcome() -> None:
    text = DOC.read_text("utf-8")
    prose = text.split("```", 2)[-1]  # what follows the diagram
    for name in [s.value for s in State] + [o.value for o in Outcome]:
        assert f"`{name}`" in prose, name
