"""Where a collection comes from: a folder of class folders, a manifest (CSV, Dublin Core
XML, iMet), a IIIF manifest or collection, the built-in demo, or a collection already in
the cache.

The command lines and the Python API name a collection the same ways; these
functions turn what they name into a :class:`~featbank.data.collection.Collection`.
"""
from __future__ import annotations

from pathlib import Path

from featbank.core.errors import BadInput
from featbank.data.collection import (
    Collection,
    from_folder,
    from_manifest,
    load_metadata,
    mark_multi_label,
)
from featbank.data.demo import demo_collection
from featbank.data.importers import from_dublin_core, from_imet, is_dublin_core


def _names(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def open_collection(*, cache: str | Path, collection: str | None = None,
                    images: str | Path | None = None, manifest: str | Path | None = None,
                    root: str | Path | None = None, image_column: str | None = None,
                    label_columns: str | None = None, attributes: str | Path | None = None,
                    multi_label: str | None = None, separator: str = ";",
                    iiif: str | None = None, iiif_size: int = 299,
                    offline: bool = False, politeness=None) -> Collection:
    """The collection a command names: a folder of class folders (``images``), a manifest
    (CSV, Dublin Core XML, or iMet's with ``attributes``), a IIIF manifest or collection
    (``iiif``: its images fetched at ``iiif_size`` pixels on the shorter side, as polite as
    ``politeness`` says, none with ``offline``), a collection already in the cache (``collection``), or the built-in demo
    (none of these); scanned from its images."""
    if (attributes or multi_label) and not manifest:
        raise BadInput("--attributes and --multi-label describe a --manifest; give one")
    if sum(bool(s) for s in (images, manifest, iiif)) > 1:
        raise BadInput("give one of --images, --manifest and --iiif")
    if offline and not iiif:
        raise BadInput("--offline is for --iiif: it reads only what earlier runs fetched")
    if iiif:
        from featbank.data.iiif_store import from_iiif

        found = from_iiif(str(iiif), cache=cache, name=collection, short_side=iiif_size,
                          label_columns=_names(label_columns), offline=offline,
                          separator=separator, politeness=politeness)
    elif images:
        found = from_folder(images, name=collection)
    elif manifest and attributes:
        found = from_imet(manifest, attributes, root=root, name=collection, separator=separator)
    elif manifest and is_dublin_core(manifest):
        found = from_dublin_core(manifest, root=root, label_columns=_names(label_columns),
                                 name=collection, separator=separator)
        if multi_label:  # an element that never repeats can still list labels in its text
            found.multi_label.update(mark_multi_label(found.labels, _names(multi_label),
                                                      separator, manifest))
    elif manifest:
        found = from_manifest(manifest, root=root, image_column=image_column,
                              label_columns=_names(label_columns), name=collection,
                              multi_label=_names(multi_label), separator=separator)
    elif collection in (None, "demo"):
        return demo_collection(cache)
    else:
        return load_metadata(Path(cache) / collection)
    _check_same_root(Path(cache) / found.name, found)
    return found


def _check_same_root(folder: Path, found: Collection) -> None:
    try:
        known = load_metadata(folder)
    except FileNotFoundError:
        return
    if known.root.resolve() != found.root.resolve():
        raise BadInput(f"collection {found.name!r} in {folder.parent} holds images of "
                         f"{known.root}, not {found.root}; pass --collection NAME")


def cached_collection(*, cache: str | Path, collection: str | None) -> Collection:
    """A collection already in the cache: by name; with none, the only one the cache holds
    (the demo when it holds none). Several and no name is an error that lists them: a
    command must never quietly run on a collection the user did not mean."""
    if collection is None:
        names = cached_names(cache)
        if len(names) > 1:
            raise BadInput(f"{Path(cache)}/ holds the collections {', '.join(names)}; "
                             "name one with --collection NAME")
        collection = names[0] if names else "demo"
    return load_metadata(Path(cache) / collection)


def cached_names(cache: str | Path) -> list[str]:
    """The collections the cache holds (folders with a ``collection.json``), sorted."""
    return sorted(p.parent.name for p in Path(cache).glob("*/collection.json"))
