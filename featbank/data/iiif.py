"""Collections published through IIIF: Presentation API manifests and collections (2.1 and
3.0) in, one image per canvas, labels from the canvases' metadata.

The documents are walked with piffle's Presentation models (2.1 and 3.0); the image of a
canvas is requested through its Image API service with piffle's URL builder, at the size
the run's backbones need (:func:`candidate_urls`). Nothing in a manifest is trusted:
labels and values are read as text (HTML in a value is reduced to its text), ids never
become paths (an image's id is a slug and a digest of its canvas id, :func:`image_id`),
and a document that is not IIIF is one clear line.

Tasks come from the metadata pairs: the pair's label, as written, names the task
(``genre``), its value is the canvas's label for it. A manifest's own metadata applies to
each of its canvases unless the canvas says otherwise. Language maps give the English
value, else the one without a language, else the first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from featbank.core.errors import BadInput

MAX_DEPTH = 8  # nested collections followed at most this deep
PRESENTATION_3 = "http://iiif.io/api/presentation/3/context.json"


@dataclass
class Service:
    """A canvas image's Image API service: its id, level (0-2), version (2 or 3) and the
    sizes it lists (level 0 serves only those)."""

    id: str
    level: int = 0
    version: int = 2
    sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Canvas:
    """One image of a collection, as its manifest describes it."""

    id: str
    manifest: str
    label: str = ""
    metadata: dict[str, list[str]] = field(default_factory=dict)  # task -> values
    rights: str = ""
    attribution: str = ""
    image: str = ""  # the painting annotation's body (often a full-size image URL)
    service: Service | None = None
    width: int = 0
    height: int = 0


def image_id(canvas_id: str) -> str:
    """A canvas's image id in the collection: ``<host>/<slug>-<digest>.jpg``, stable for the
    canvas id, a safe relative path whatever the id holds."""
    parts = urlsplit(canvas_id)
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", parts.hostname or "local").strip("._-") or "local"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.path}_{parts.query}").strip("._-")[-80:]
    digest = hashlib.sha256(canvas_id.encode("utf-8")).hexdigest()[:12]
    return f"{host}/{slug.strip('._-') or 'canvas'}-{digest}.jpg"


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def plain(text) -> str:
    """A value as plain text: the text of any HTML in it, spaces collapsed."""
    text = str(text)
    if "<" in text or "&" in text:
        parser = _Text()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    return re.sub(r"\s+", " ", text).strip()


def values(value) -> list[str]:
    """Every value a IIIF text holds, as plain text: a string, a 2.1 ``@value`` object or a
    list of them (English first), or a 3.0 language map (``en``, then ``none``, then the
    first language)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [plain(value)] if plain(value) else []
    if isinstance(value, list):
        english = [v for v in value if isinstance(v, dict) and
                   str(v.get("language", v.get("@language", ""))).startswith("en")]
        found = [t for v in (english or value) for t in values(v)]
        return list(dict.fromkeys(found))
    if isinstance(value, dict):
        if "value" in value or "@value" in value:
            return values(value.get("value", value.get("@value")))
        for key in ("en", "none", *value):
            if key in value:
                return values(value[key])
    return [plain(value)] if plain(value) else []


def text(value) -> str:
    """The first value of a IIIF text ("" when none)."""
    found = values(value)
    return found[0] if found else ""


def _metadata(pairs) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pair in pairs or []:
        if isinstance(pair, dict):
            label = text(pair.get("label"))
            if label:
                found.setdefault(label, []).extend(values(pair.get("value")))
    return {k: list(dict.fromkeys(v)) for k, v in found.items()}


def _parsed(document: dict, where: str):
    """A document as piffle's Presentation model (2.1 or 3.0, by its ``type``)."""
    from piffle.iiif_dataclasses import MANIFEST2_CLASSES, MANIFEST3_CLASSES
    from piffle.utils import format_manifest

    logging.getLogger("piffle").setLevel(logging.ERROR)  # "Annotation is missing 'id' field"
    if not isinstance(document, dict):
        raise BadInput(f"{where} is not a IIIF document (a JSON object)")
    formatted = json.loads(json.dumps(document), object_hook=format_manifest)
    kind = formatted.get("type")
    model = (MANIFEST3_CLASSES | MANIFEST2_CLASSES).get(kind) if isinstance(kind, str) else None
    if kind not in ("Manifest", "Collection", "sc:Manifest", "sc:Collection") or model is None:
        raise BadInput(f"{where} is not a IIIF manifest or collection (its type is {kind!r})")
    try:
        return model(**formatted)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise BadInput(f"{where}: not a IIIF {kind} piffle can read ({err})") from None


def read_canvases(source: str, get_json: Callable[[str], dict], *,
                  warn: Callable[[str], None] = print) -> list[Canvas]:
    """Every canvas of ``source`` (a manifest or a collection, nested collections followed),
    in document order, each canvas once. ``get_json`` reads a document by URL or path."""
    canvases: dict[str, Canvas] = {}
    seen: set[str] = set()

    def walk(ref: str, depth: int, inline: dict | None = None):
        if ref in seen or depth > MAX_DEPTH:
            return
        seen.add(ref)
        document = inline if inline is not None and _has_content(inline) else get_json(ref)
        model = _parsed(document, ref)
        if model.type in ("Collection", "sc:Collection"):
            for kind, child in _members(model):
                child_id = child.get("id") or child.get("@id") or ""
                if child_id or _has_content(child):
                    walk(child_id or f"{ref}#{len(seen)}", depth + 1, child)
                else:
                    warn(f"{ref}: a {kind} without an id is left out")
            return
        for canvas in _canvases(model, ref):
            canvases.setdefault(canvas.id, canvas)

    walk(source, 0)
    return list(canvases.values())


def _has_content(document: dict) -> bool:
    keys = ("items", "sequences", "manifests", "collections", "members")
    return any(document.get(k) for k in keys)


def _members(model) -> list[tuple[str, dict]]:
    if model.type == "Collection":  # 3.0: items of type Manifest or Collection
        return [(_get(m, "type") or "member", _plain_dict(m)) for m in model.items or []]
    other = model.other_metadata or {}
    members = [*(model.collections or []), *(model.manifests or []), *other.get("members", [])]
    return [(_get(m, "type") or "member", _plain_dict(m)) for m in members]


def _get(obj, key: str, default=None):
    if isinstance(obj, dict):
        return obj.get(key, obj.get(f"@{key}", default))
    value = getattr(obj, key, None)
    if value is None:
        value = (getattr(obj, "other_metadata", None) or {}).get(key, default)
    return value


def _plain_dict(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    out = {k: v for k, v in vars(obj).items() if k != "other_metadata"}
    out.update(getattr(obj, "other_metadata", None) or {})
    return out


def _canvases(manifest, where: str) -> list[Canvas]:
    """The canvases of one manifest (2.1: every sequence's; 3.0: its items)."""
    shared = _metadata(_get(manifest, "metadata"))
    rights = text(_get(manifest, "rights") or _get(manifest, "license"))
    attribution = text(_get(manifest, "attribution") or _get(manifest, "requiredStatement")
                       and _get(manifest, "requiredStatement").get("value"))
    if manifest.type == "Manifest":
        items = list(manifest.items or [])
    else:
        items = [c for sequence in manifest.sequences or [] for c in (sequence.canvases or [])]
    out = []
    for item in items:
        canvas_id = _get(item, "id")
        if not canvas_id:
            continue
        body = _painting_body(item, manifest.type == "Manifest")
        out.append(Canvas(id=str(canvas_id), manifest=str(manifest.id or where),
                          label=text(_get(item, "label")),
                          metadata={**shared, **_metadata(_get(item, "metadata"))},
                          rights=text(_get(item, "rights") or _get(item, "license")) or rights,
                          attribution=attribution, image=str(_get(body, "id") or "") if body else "",
                          service=_service(body) if body else None,
                          width=_int(_get(item, "width")), height=_int(_get(item, "height"))))
    return out


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _painting_body(canvas, version3: bool) -> dict | None:
    """The image painted on a canvas: 3.0 ``items[].items[].body``, 2.1 ``images[].resource``
    (a choice gives its default)."""
    if version3:
        annotations = [a for page in (_get(canvas, "items") or [])
                       for a in (_get(page, "items") or [])]
        bodies = [_get(a, "body") for a in annotations]
    else:
        bodies = [_get(a, "resource") for a in (_get(canvas, "images") or [])]
    for body in bodies:
        if isinstance(body, list):
            body = body[0] if body else None
        if isinstance(body, dict) and body.get("type") in ("Choice", "oa:Choice"):
            body = (body.get("items") or [body.get("default")])[0]
        if isinstance(body, dict):
            return body
    return None


def _service(body: dict) -> Service | None:
    services = body.get("service") or []
    for service in services if isinstance(services, list) else [services]:
        if not isinstance(service, dict):
            continue
        sid = service.get("id") or service.get("@id")
        profile = service.get("profile")
        profile = " ".join(str(p) for p in profile) if isinstance(profile, list) else str(profile)
        kind = str(service.get("type") or service.get("@type") or "")
        context = str(service.get("context") or service.get("@context") or "")
        if not sid or not ("ImageService" in kind or "iiif.io/api/image" in context + profile):
            continue
        level = re.search(r"level([0-2])", profile)
        version = 3 if kind == "ImageService3" or "image/3" in context else 2
        return Service(id=str(sid).rstrip("/"), level=int(level.group(1)) if level else 0,
                       version=version, sizes=_sizes(service.get("sizes")))
    return None


def _sizes(listed) -> list[tuple[int, int]]:
    return sorted({(_int(s.get("width")), _int(s.get("height"))) for s in listed or []
                   if isinstance(s, dict) and _int(s.get("width")) > 0 and _int(s.get("height")) > 0})


def candidate_urls(canvas: Canvas, short_side: int, info: dict | None = None) -> list[str]:
    """The URLs to try, in order, for a canvas's image whose shorter side should be at
    least ``short_side`` pixels: through its Image API service (a level-0 service at the
    smallest size it lists that is large enough, else its largest; levels 1-2 at the
    size asked for, never above full size), then the annotation body's own URL."""
    from piffle.image import IIIFImageClient

    urls: list[str] = []
    service = canvas.service
    if service is not None:
        client = IIIFImageClient.init_from_url(f"{service.id}/info.json")
        sizes = service.sizes or _sizes((info or {}).get("sizes"))
        width, height = canvas.width or _int((info or {}).get("width")), \
            canvas.height or _int((info or {}).get("height"))
        full = str(client.size(max=True) if service.version == 3 else client.size(full=True))
        if service.level == 0:
            big = [s for s in sizes if min(s) >= short_side]
            chosen = min(big) if big else (max(sizes) if sizes else None)
            listed = [str(client.size(width=chosen[0], height=chosen[1])),
                      str(client.size(width=chosen[0]))] if chosen else []
            # a static layout may hold the full size under its name, its size, or both
            at_full = chosen is None or (chosen[0], chosen[1]) == (width, height)
            urls += [full, *listed] if at_full else [*listed, full]
        elif width and height and min(width, height) > short_side:
            scale = short_side / min(width, height)
            w, h = math.ceil(width * scale), math.ceil(height * scale)
            urls.append(str(client.size(width=w, height=h) if service.level == 2
                            else client.size(width=w)))
        urls.append(full)
    if canvas.image and canvas.image not in urls:
        urls.append(canvas.image)
    return list(dict.fromkeys(urls))


def catalogue_rows(canvases: list[Canvas], urls: dict[str, str] | None = None) -> list[list[str]]:
    """The catalogue of a IIIF collection: one row per canvas (image id, canvas, manifest,
    label, rights, attribution, the image URL it was fetched from)."""
    rows = [["id", "canvas", "manifest", "label", "rights", "attribution", "image_url"]]
    for c in canvases:
        key = image_id(c.id)
        rows.append([key, c.id, c.manifest, c.label, c.rights, c.attribution,
                     (urls or {}).get(key, "")])
    return rows


def default_name(source: str) -> str:
    """A collection name from a manifest's URL or path: its last meaningful path part."""
    parts = urlsplit(source)
    path = parts.path if parts.scheme else Path(source).as_posix()
    pieces = [p for p in path.split("/") if p and p.lower() not in
              ("manifest", "manifest.json", "collection", "collection.json", "iiif")]
    stem = re.sub(r"\.json$", "", pieces[-1]) if pieces else (parts.hostname or "iiif")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "iiif"
