"""A small test schema exercising every attribute kind, index kind and codec type."""

from __future__ import annotations

import enum
from typing import Any

from bknr_cluster.store import (
    Index,
    StoreDefinition,
    StoreObject,
    Transient,
    context,
    make_blob,
    query,
    transaction,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Person(StoreObject):
    name: str = Index(unique=True)
    city: str | None = Index()
    age: int = 0
    tags: Any = None
    friend: Any = None
    note: str = Transient("")


class Employee(Person):
    salary: int = 0
    color: Any = None


class Doc(StoreObject):
    title: str = "untitled"
    body: Any = None           # a Blob


class Boom(Exception):
    """Raised by transactions that fail on purpose."""


@transaction("add_person")
def add_person(name: str, city: str | None = None, age: int = 0) -> Person:
    return Person(name=name, city=city, age=age)


@transaction("add_employee")
def add_employee(name: str, salary: int, color: Any = None) -> Employee:
    return Employee(name=name, salary=salary, color=color)


@transaction("set_attr")
def set_attr(name: str, attr: str, value: Any) -> None:
    setattr(Person.by_name(name), attr, value)


@transaction("delete_person")
def delete_person(name: str) -> None:
    Person.by_name(name).delete()


@transaction("befriend")
def befriend(a: str, b: str) -> None:
    Person.by_name(a).friend = Person.by_name(b)


@transaction("mess_then_fail")
def mess_then_fail(name: str) -> None:
    """Creates, writes, deletes (touching indices) and then raises."""
    Person(name=name + "-new", city="Nowhere")
    for p in Person.all():
        p.city = "Changed"
        p.age += 1
    victim = Person.by_name(name)
    if victim is not None:
        victim.delete()
    raise Boom(f"failing on purpose after messing with {name}")


@transaction("stamp")
def stamp(name: str) -> list:
    ctx = context()
    p = Person(name=name, age=ctx.random.randrange(1_000_000))
    p.tags = [ctx.timestamp_ns, ctx.now.isoformat()]
    return [p.id, p.age, ctx.timestamp_ns]


@transaction("store_doc")
def store_doc(title: str, data: bytes) -> Doc:
    return Doc(title=title, body=make_blob(data))


@transaction("drop_doc")
def drop_doc(title: str) -> None:
    for d in Doc.where(title=title):
        d.delete()


@transaction("echo")
def echo(value: Any) -> Any:
    return value


@query("names")
def names() -> list[str]:
    return [p.name for p in Person.all()]


@query("by_city")
def by_city(city: str) -> list[str]:
    return [p.name for p in Person.by_city(city)]


definition = StoreDefinition(
    "people", classes=[Person, Employee, Doc],
    transactions=[add_person, add_employee, set_attr, delete_person, befriend, mess_then_fail,
                  stamp, store_doc, drop_doc, echo],
    queries=[names, by_city], enums=[Color])
