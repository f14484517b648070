"""Schema evolution: snapshots written by an older class definition load into a newer one."""

import io
import logging

from bknr_cluster.store import Index, Store, StoreDefinition, StoreObject, transaction


class ItemV1(StoreObject):
    __store_name__ = "Item"
    sku: str = Index(unique=True)
    qty: int = 0
    legacy: str = "old"


class ShelfV1(StoreObject):
    __store_name__ = "OldShelf"
    label: str = ""
    item: object = None


@transaction("mk1")
def mk1(sku, qty):
    item = ItemV1(sku=sku, qty=qty)
    ShelfV1(label="s-" + sku, item=item)


class ItemV2(StoreObject):
    __store_name__ = "Item"
    __renames__ = {"qty": "quantity"}          # the rename hook: old attribute -> new attribute
    sku: str = Index(unique=True)
    quantity: int = 0
    colour: str = "grey"                       # added: gets its default
    tags: list = []                            # added, mutable default: one fresh list per object


class ShelfV2(StoreObject):
    __store_name__ = "Shelf"
    label: str = ""
    item: object = None


def test_added_removed_renamed_attributes_and_class_rename(caplog):
    old = Store(None, definition=StoreDefinition("shop", [ItemV1, ShelfV1], [mk1]), bind=False)
    old.execute(mk1, "a", 3)
    old.execute(mk1, "b", 4)
    data = old.snapshot_bytes()
    new = Store(None, definition=StoreDefinition("shop", [ItemV2, ShelfV2],
                                                 class_renames={"OldShelf": "Shelf"}), bind=False)
    with caplog.at_level(logging.WARNING, logger="bknr_cluster.store"):
        assert new.load_snapshot(io.BytesIO(data)) == 4
    items = new.all(ItemV2)
    assert [(i.sku, i.quantity, i.colour, i.tags) for i in items] == [
        ("a", 3, "grey", []), ("b", 4, "grey", [])]
    assert items[0].tags is not items[1].tags
    assert new.lookup(ItemV2, "sku", "b") is items[1]
    shelves = new.all(ShelfV2)
    assert [s.item for s in shelves] == items and shelves[0].label == "s-a"
    report = "\n".join(new.schema_report)
    assert "Item.legacy: no longer declared; values dropped" in report
    assert "Item.colour: not in the snapshot; set to default 'grey'" in report
    assert "Item.quantity" not in report                     # renamed, not added
    assert "Item.legacy" in caplog.text
    assert new._next_id == old._next_id


def test_dropped_class_is_reported_and_references_become_none():
    old = Store(None, definition=StoreDefinition("shop", [ItemV1, ShelfV1], [mk1]), bind=False)
    old.execute(mk1, "a", 1)
    new = Store(None, definition=StoreDefinition("shop", [ShelfV2], class_renames={"OldShelf": "Shelf"}),
                bind=False)
    new.load_snapshot(io.BytesIO(old.snapshot_bytes()))
    assert "class Item: not in the store definition; its objects are dropped" in new.schema_report
    assert [s.item for s in new.all(ShelfV2)] == [None]
