"""A store that is not the bank: notes, no transfer transaction. The drill must work on it
without touching its objects (``tests.cli.notes_app:definition``)."""

from __future__ import annotations

from bknr_cluster.store import Index, StoreDefinition, StoreObject, query, transaction


class Note(StoreObject):
    key: str = Index(unique=True)
    text: str = ""


@transaction("add_note")
def add_note(key: str, text: str) -> int:
    return Note(key=key, text=text).id


@transaction("add_notes")
def add_notes(prefix: str, n: int) -> int:
    """``n`` notes in one transaction (tests build large stores with it)."""
    for i in range(n):
        Note(key=f"{prefix}-{i}", text=f"note {i} of {prefix}")
    return n


@query("notes")
def notes() -> list[list]:
    return [[n.id, n.key, n.text] for n in Note.all()]


definition = StoreDefinition("notes", classes=[Note], transactions=[add_note, add_notes],
                             queries=[notes])
