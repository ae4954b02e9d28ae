"""Collections in the formats museums ship: Dublin Core XML records, iMet attributes.

- **Dublin Core XML**: a folder of XML files (one record each) or one XML file
  holding many records (an OAI-PMH ``ListRecords`` dump). A record is an
  element whose children include ``dc:`` elements (``creator``, ``type``,
  ``subject``, ...); each element name becomes a task, and an element
  repeated within a record makes its task multi-label. ``dc:identifier``
  names the image relative to the root (the first identifier that names a
  file there; URLs are tried by their last path part); without one, a record
  file's own path stands in, with the image's extension. Untrusted XML is
  parsed with ``defusedxml`` (no entity expansion, no external fetches).
- **iMet**: ``train.csv`` (``id,attribute_ids``, space-separated ids) and
  ``labels.csv`` (``attribute_id,attribute_name``, names such as
  ``culture::italian``); each prefix becomes one multi-label task.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from featbank.core.errors import BadInput, MissingFile
from featbank.data.collection import (
    Collection,
    _index_files,
    _resolve,
    check_name,
    chosen_tasks,
    clean_label,
    default_name,
)

DC = "{http://purl.org/dc/elements/1.1/}"


def is_dublin_core(path: str | os.PathLike) -> bool:
    """A folder (of XML records) or an ``.xml`` file."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() == ".xml"


def _records(xml_path: Path):
    """The records of one XML file: elements with ``dc:`` children, as
    ``[(element name, text), ...]`` in document order."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        tree = ElementTree.parse(xml_path)
    except ElementTree.ParseError as err:
        raise BadInput(f"{xml_path}: malformed XML ({err})") from None
    except DefusedXmlException as err:
        raise BadInput(f"{xml_path}: refused unsafe XML ({type(err).__name__})") from None
    records = []
    for element in tree.iter():
        fields = [(child.tag[len(DC):], (child.text or "").strip()) for child in element
                  if isinstance(child.tag, str) and child.tag.startswith(DC)]
        if fields:
            records.append(fields)
    return records


def from_dublin_core(source: str | os.PathLike, *, root: str | os.PathLike | None = None,
                     label_columns: list[str] | None = None, name: str | None = None,
                     separator: str = ";") -> Collection:
    """A collection from Dublin Core XML records (see the module docstring)."""
    source = Path(source)
    if not source.exists():
        raise MissingFile(f"manifest {source} does not exist")
    root = Path(root) if root is not None else (source if source.is_dir() else source.parent)
    if not root.is_dir():
        raise MissingFile(f"image root {root} does not exist")
    files = sorted(p for p in source.rglob("*.xml")) if source.is_dir() else [source]
    if not files:
        raise BadInput(f"no .xml records in {source}")
    index = _index_files(root)
    names = _by_file_name(index)
    found: dict[str, dict[str, list[str]]] = {}
    missing: list[str] = []
    for xml_path in files:
        records = _records(xml_path)
        for fields in records:
            image_id = _record_image(fields, xml_path, root, index, names,
                                     own_file=len(records) == 1)
            if image_id is None:
                refs = [v for k, v in fields if k == "identifier"]
                missing.append(refs[0] if refs else str(xml_path))
                continue
            values: dict[str, list[str]] = {}
            for key, text in fields:
                text = clean_label(text.replace(separator, ","))
                if key != "identifier" and text:
                    values.setdefault(key, []).append(text)
            found.setdefault(image_id, values)
    if not found:
        raise BadInput(f"none of the records in {source} names an image found under "
                         f"{root}; check --root and the records' dc:identifier")
    have = sorted({k for values in found.values() for k in values})
    elements = chosen_tasks(have, label_columns, lambda c: f"{source}: no dc:{c} element in "
                            f"any record; the records have {', '.join(have)}")
    ids = sorted(found)
    multi = {e for e in elements if any(len(v.get(e, ())) > 1 for v in found.values())}
    labels = {e: [(separator.join(sorted(set(found[i][e]))) if e in multi else found[i][e][0])
                  if e in found[i] else None for i in ids] for e in elements}
    return Collection(name=check_name(name or default_name(source)), root=root, ids=ids,
                      labels=labels, missing=missing, source=f"dublin-core:{source}",
                      multi_label={e: separator for e in sorted(multi)})


def _record_image(fields, xml_path: Path, root: Path, index: dict, names: dict, *,
                  own_file: bool):
    for key, ref in fields:
        if key == "identifier" and ref:
            ref = ref.replace("\\", "/")
            last = ref.rstrip("/").rsplit("/", 1)[-1]
            relative = "://" not in ref and not ref.startswith("/") and ".." not in ref.split("/")
            image_id = (_resolve(ref, root, index) if relative else None) or \
                _resolve(last, root, index) or \
                names.get(last.rsplit(".", 1)[0])
            if image_id is not None:
                return image_id
    if own_file:  # the record file's own path, with the image's extension
        try:
            return _resolve(xml_path.resolve().relative_to(root.resolve()).with_suffix("")
                            .as_posix(), root, index)
        except ValueError:  # the record lies outside the image root
            return index.get(xml_path.stem)
    return None


def _by_file_name(index: dict[str, str]) -> dict[str, str | None]:
    """File name without extension -> image, None where two folders share the name."""
    names: dict[str, str | None] = {}
    for key, rel in index.items():
        name = key.rsplit("/", 1)[-1]
        names[name] = None if name in names else rel
    return names


def from_imet(csv_path: str | os.PathLike, attributes: str | os.PathLike, *,
              root: str | os.PathLike | None = None, name: str | None = None,
              separator: str = ";") -> Collection:
    """An iMet-style collection: one multi-label task per attribute prefix."""
    csv_path, attributes = Path(csv_path), Path(attributes)
    for path in (csv_path, attributes):
        if not path.is_file():
            raise MissingFile(f"{path} does not exist")
    root = Path(root) if root is not None else csv_path.parent
    if not root.is_dir():
        raise MissingFile(f"image root {root} does not exist")
    names: dict[str, tuple[str, str]] = {}
    with open(attributes, newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            try:
                prefix, _, value = row["attribute_name"].partition("::")
                names[row["attribute_id"].strip()] = (prefix.strip(), value.strip() or prefix)
            except (KeyError, AttributeError):
                raise BadInput(f"{attributes}:{number}: expected columns attribute_id,"
                                 "attribute_name") from None
    tasks = sorted({prefix for prefix, _ in names.values()})
    index = _index_files(root)
    found: dict[str, dict[str, set]] = {}
    missing = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            if "id" not in row or "attribute_ids" not in row:
                raise BadInput(f"{csv_path}:{number}: expected columns id,attribute_ids")
            image_id = _resolve(row["id"].strip(), root, index)
            if image_id is None:
                missing.append(row["id"].strip())
                continue
            values: dict[str, set] = {}
            for attribute in (row["attribute_ids"] or "").split():
                if attribute not in names:
                    raise BadInput(f"{csv_path}:{number}: unknown attribute id {attribute!r} "
                                     f"(not in {attributes})")
                prefix, value = names[attribute]
                values.setdefault(prefix, set()).add(value.replace(separator, ","))
            found.setdefault(image_id, values)
    if not found:
        raise BadInput(f"none of the images named in {csv_path} were found under {root}; "
                         "check --root")
    ids = sorted(found)
    labels = {t: [separator.join(sorted(found[i][t])) if t in found[i] else None for i in ids]
              for t in tasks}
    return Collection(name=check_name(name or default_name(csv_path)), root=root, ids=ids,
                      labels=labels, missing=missing, source=f"imet:{csv_path}",
                      multi_label={t: separator for t in tasks})
