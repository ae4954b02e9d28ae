"""What the tests share: paths of the real data, tiny generated collections and caches,
and checks of the command-line contract (one-line errors)."""
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HERITAGE = SHARED / "data" / "heritage"
SQUEEZENET = SHARED / "weights" / "squeezenet1_1-imagenet.pth"

# CI sets FEATBANK_REQUIRE_SHARED=1: there, real-data tests run (and fail without the
# data) instead of being skipped; a developer without ../shared may skip them.
REQUIRE_SHARED = os.environ.get("FEATBANK_REQUIRE_SHARED") == "1"
needs_heritage = pytest.mark.skipif(not HERITAGE.is_dir() and not REQUIRE_SHARED,
                                    reason="../shared/data/heritage is absent (real-image claims)")
needs_squeezenet = pytest.mark.skipif(not SQUEEZENET.is_file() and not REQUIRE_SHARED,
                                      reason="../shared/weights/squeezenet1_1-imagenet.pth is absent")


def make_image(path: Path, seed: int, size=(40, 32), mode="RGB", fmt=None, **save):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **save)
    return path


def script_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FEATBANK_DEBUG", None)
    return env


def assert_one_line_error(result, match: str) -> None:
    """Bad input: exit 2, exactly one line on stderr, starting 'error:', no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr


def write_toy_cache(cache: Path, name: str = "toy", backbones=(("resnet18", 32), ("alexnet", 16)),
                    seed: int = 0, dtype: str = "float32") -> Path:
    """A cached collection without images: labels plus synthetic feature files.

    Tasks: ``style`` (3 separable classes of 20), ``single`` (one class) and
    ``tiny`` (classes of 4 images, all under the default minimum).
    """
    from featbank.data.collection import Collection, save_metadata
    from featbank.store.provenance import feature_path
    from featbank.store.writer import FeatureWriter

    rng = np.random.default_rng(seed)
    styles = np.repeat(["baroque", "cubism", "gothic"], 20)
    ids = [f"{s}/{k}.jpg" for k, s in enumerate(styles)]
    labels = {"style": list(styles), "single": ["one"] * len(ids),
              "tiny": [f"t{k % 15}" for k in range(len(ids))]}
    collection = Collection(name=name, root=cache / "images", ids=ids, labels=labels)
    folder = cache / name
    save_metadata(collection, folder)
    (folder / "extract_config.json").write_text("{}")
    for backbone, dim in backbones:
        means = rng.normal(scale=3.0, size=(3, dim))
        X = means[np.searchsorted(["baroque", "cubism", "gothic"], styles)]
        X = (X + rng.normal(size=X.shape)).astype(np.float32)
        attrs = {"backbone": backbone, "feature_dim": dim, "weights": "random", "input_size": 224,
                 "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash", "crop_pct": 1.0,
                 "interpolation": "bilinear", "dtype": dtype, "collection": name}
        out = FeatureWriter(feature_path(cache, name, backbone, "random"), attrs)
        out.add_batch(ids, X)
        out.merge()
    return folder


def image_collection(cache: Path, name: str = "art", classes=("icon", "vase"), per_class: int = 12,
                     size=(48, 48)):
    """A cached collection of generated images (no features): ``<cache>/<name>``."""
    from featbank.data.collection import from_folder, save_metadata

    root = cache.parent / f"{name}_images"
    for c, cls in enumerate(classes):
        for k in range(per_class):
            make_image(root / cls / f"{k}.png", seed=100 * c + k, size=size)
    collection = from_folder(root, name=name)
    save_metadata(collection, cache / name)
    return collection


def tiny_run(cache: Path, collection, **settings) -> Path:
    """A squeezenet1_1 fine-tuned from random weights for one epoch at 48 px; its run folder."""
    from featbank.data.tasks import SplitSpec
    from featbank.finetuning.train import FinetuneConfig, finetune

    config = dict(backbone="squeezenet1_1", task="label", init="random", epochs=1, image_size=48,
                  batch_size=8, workers=0, cache_root=str(cache), progress=False,
                  split=SplitSpec(min_per_class=3))
    config.update(settings)
    return finetune(collection, FinetuneConfig(**config), log=lambda m: None).folder


# HTML pages are tested as a person sees them: Debian's chromium, driven by playwright.
# .ci/run installs chromium and sets FEATBANK_REQUIRE_BROWSER=1, so there it never skips.
needs_browser = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists() and os.environ.get("FEATBANK_REQUIRE_BROWSER") != "1",
    reason="Debian's chromium is not installed (.ci/run installs it)")


@contextmanager
def browser_page():
    """A headless chromium page (closed after the block)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def write_layered_cache(cache: Path, name: str = "toy") -> Path:
    """:func:`write_toy_cache` with resnet18's features of two earlier layers too (as
    ``extract.py --layers layer1,layer3,final`` would write them): ``layer1`` barely
    separates the styles, ``layer3`` more, ``final`` (the toy's) best."""
    from featbank.data.collection import load_metadata
    from featbank.store.features import read_features
    from featbank.store.provenance import feature_path
    from featbank.store.writer import FeatureWriter

    folder = write_toy_cache(cache, name, backbones=(("resnet18", 32),))
    final = read_features(feature_path(cache, name, "resnet18", "random"))
    styles = np.array(load_metadata(folder).labels["style"])
    rng = np.random.default_rng(1)
    for index, (layer, signal) in enumerate((("layer1", 0.15), ("layer3", 0.5)), start=2):
        means = rng.normal(scale=3.0 * signal, size=(3, 16))
        X = means[np.searchsorted(["baroque", "cubism", "gothic"], styles)]
        X = (X + rng.normal(size=X.shape)).astype(np.float32)
        attrs = {**final.provenance, "feature_dim": 16, "layer": layer, "layer_index": index,
                 "pool": "gap"}
        out = FeatureWriter(feature_path(cache, name, "resnet18", "random", layer), attrs)
        out.add_batch(final.ids, X)
        out.merge()
    return folder
