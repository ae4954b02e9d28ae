"""A folder of images published as IIIF: a static level-0 Image API layout and a
Presentation 2.1 or 3.0 manifest, for serving a collection from any static web server
(``python -m http.server``) and for trying ``extract.py --iiif`` without a museum.

Each image keeps its bytes: ``<base>/iiif/<n>/full/full/0/default.jpg`` (2.1),
``full/max/0/default.jpg`` (3.0) and ``full/<w>,/0/default.jpg`` / ``full/<w>,<h>/0/...``
(the one size ``info.json`` lists) are the file itself, so features of the served images
are those of the folder's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

CONTEXT = {2: "http://iiif.io/api/presentation/2/context.json",
           3: "http://iiif.io/api/presentation/3/context.json"}
IMAGE_CONTEXT = {2: "http://iiif.io/api/image/2/context.json",
                 3: "http://iiif.io/api/image/3/context.json"}


def write_layout(items: list[tuple[Path, dict[str, str]]], folder: str | Path, base: str, *,
                 version: int = 3, label: str = "featbank collection") -> Path:
    """Publish ``items`` (image path, metadata label -> value) under ``folder`` as served
    from ``base`` (``http://127.0.0.1:8000``); returns the manifest's path
    (``manifest.json``)."""
    folder, base = Path(folder), base.rstrip("/")
    canvases = []
    for n, (path, metadata) in enumerate(items):
        with Image.open(path) as im:
            width, height = im.size
        service = f"{base}/iiif/{n}"
        _write_image(folder / "iiif" / str(n), Path(path), service, width, height, version)
        canvases.append(_canvas(n, base, service, width, height, metadata, version))
    manifest = (_manifest3 if version == 3 else _manifest2)(base, label, canvases)
    out = folder / "manifest.json"
    out.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    return out


def _write_image(where: Path, path: Path, service: str, width: int, height: int,
                 version: int) -> None:
    for size in ("full", "max", f"{width},", f"{width},{height}"):
        target = where / "full" / size / "0" / "default.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    info = {"@context": IMAGE_CONTEXT[version], "width": width, "height": height,
            "sizes": [{"width": width, "height": height}]}
    if version == 3:
        info |= {"id": service, "type": "ImageService3", "protocol": "http://iiif.io/api/image",
                 "profile": "level0"}
    else:
        info |= {"@id": service, "protocol": "http://iiif.io/api/image",
                 "profile": ["http://iiif.io/api/image/2/level0.json"]}
    (where / "info.json").write_text(json.dumps(info), encoding="utf-8")


def _canvas(n: int, base: str, service: str, width: int, height: int,
            metadata: dict[str, str], version: int) -> dict:
    canvas_id = f"{base}/canvas/{n}"
    if version == 2:
        return {"@id": canvas_id, "@type": "sc:Canvas", "label": f"image {n}",
                "width": width, "height": height,
                "metadata": [{"label": k, "value": v} for k, v in metadata.items()],
                "images": [{"@type": "oa:Annotation", "motivation": "sc:painting",
                            "on": canvas_id, "resource": {
                                "@id": f"{service}/full/full/0/default.jpg",
                                "@type": "dctypes:Image", "format": "image/jpeg",
                                "width": width, "height": height,
                                "service": {"@context": IMAGE_CONTEXT[2], "@id": service,
                                            "profile": "http://iiif.io/api/image/2/level0.json"}}}]}
    return {"id": canvas_id, "type": "Canvas", "label": {"none": [f"image {n}"]},
            "width": width, "height": height,
            "metadata": [{"label": {"en": [k]}, "value": {"en": [v]}} for k, v in metadata.items()],
            "items": [{"id": f"{canvas_id}/page", "type": "AnnotationPage", "items": [{
                "id": f"{canvas_id}/page/image", "type": "Annotation", "motivation": "painting",
                "target": canvas_id, "body": {
                    "id": f"{service}/full/max/0/default.jpg", "type": "Image",
                    "format": "image/jpeg", "width": width, "height": height,
                    "service": [{"id": service, "type": "ImageService3", "profile": "level0"}]}}]}]}


def _manifest2(base: str, label: str, canvases: list[dict]) -> dict:
    return {"@context": CONTEXT[2], "@id": f"{base}/manifest.json", "@type": "sc:Manifest",
            "label": label, "attribution": "featbank test collection",
            "license": "https://creativecommons.org/publicdomain/zero/1.0/",
            "sequences": [{"@type": "sc:Sequence", "canvases": canvases}]}


def _manifest3(base: str, label: str, canvases: list[dict]) -> dict:
    return {"@context": CONTEXT[3], "id": f"{base}/manifest.json", "type": "Manifest",
            "label": {"en": [label]}, "rights": "http://creativecommons.org/publicdomain/zero/1.0/",
            "requiredStatement": {"label": {"en": ["Attribution"]},
                                  "value": {"en": ["featbank test collection"]}},
            "items": canvases}
