"""GPU extraction: decode only, forward only and end to end (JPEG files -> HDF5), in one run.

    .venv/bin/python bench/bench_gpu.py [--images DIR] [--n 20000] [--size 500x375] [--batch-size 256] [--repeats 3]

With no ``--images``, N synthetic JPEGs of ``--size`` (ImageNet's typical
500x375, quality 90) are generated into a temporary folder. ``--repeat K``
reuses a small real collection K times (hard links, so ids stay distinct).

- loader: what the DataLoader workers hand over, alone (Pillow's 224-px views
  for ``--decode cpu``, JPEG bytes for nvJPEG), and per worker: how many
  workers it takes to feed a forward pass;
- decode only: featbank's loader (workers read bytes) + nvJPEG batch decode
  + resize to 224 on the device, a batch ahead in a thread; no model, and no
  share for Pillow: what nvJPEG does alone; once per JPEG decoder library
  (TorchCodec's, torchvision's; ``--jpeg-decoder``), as is end to end;
- forward only: ResNet50 on uint8 batches already on the GPU (normalise,
  channels_last, bf16 autocast, features copied back), featbank's own runner;
- end to end: ``extract()`` into a fresh cache, from the first decoded batch
  to the committed HDF5 file (worker start and model loading excluded, and
  printed apart as wall time). With ``--decode device``, twice: nvJPEG alone,
  then with the share of images the workers decode with Pillow to help it
  (``devicedecode.DecoderBalance``), the run the ratio is taken from.

Records img/s for each and the ratio end to end / forward only, repeat by
repeat (median and min-max of ``--repeats``, after a warm-up), with the
machine, in bench/results/bench_gpu.json. Target on an H100: ratio >= 0.9 and >= 5,000 img/s. On a
machine without CUDA it says so, and measures the loader and the CPU path on a
few images.
"""
import argparse
import faulthandler
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from harness import Bench
from PIL import Image

from featbank.core.settings import default_workers
from featbank.data.collection import Collection, from_folder
from featbank.extraction.devicedecode import JPEG_DECODERS, jpeg_decoder
from featbank.extraction.engine import ExtractConfig, extract
from featbank.extraction.loader import Images, batches_on_device, collate
from featbank.models.inference import TrunkRunner
from featbank.models.registry import get_spec
from featbank.models.trunks import load_trunk


def _synthetic_jpeg(args) -> None:
    path, seed, (width, height) = args
    rng = np.random.default_rng(seed)
    # Smooth colour fields plus grain: JPEG sizes like photographs (~50-100 KB).
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def synthetic_collection(folder: Path, n: int, size: tuple[int, int]) -> Collection:
    (folder / "synthetic").mkdir(parents=True)
    jobs = [(folder / "synthetic" / f"{k:07d}.jpg", k, size) for k in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_synthetic_jpeg, jobs, chunksize=64))
    return from_folder(folder, name="bench")


def repeated_collection(source: str, folder: Path, repeat: int) -> Collection:
    real = from_folder(source)
    for r in range(repeat):
        for image_id in real.ids:
            target = folder / f"copy{r}" / image_id
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(real.path(image_id), target)
    return from_folder(folder, name="bench")


def _loader(collection: Collection, *, batch_size: int, workers: int, jpeg_bytes: bool,
            pin: bool = False):
    pre = get_spec("resnet50").preprocess
    paths = [collection.path(i) for i in collection.ids]
    loader = torch.utils.data.DataLoader(Images(paths, [pre], jpeg_bytes=jpeg_bytes),
                                         batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate, pin_memory=pin)
    return loader, [pre], paths


def loader_rate(collection: Collection, *, batch_size: int, workers: int,
                jpeg_bytes: bool) -> float:
    """img/s the DataLoader workers hand over: Pillow's 224-px views, or JPEG bytes."""
    loader, _, _ = _loader(collection, batch_size=batch_size, workers=workers,
                           jpeg_bytes=jpeg_bytes)
    return _rate(loader, cuda=False)


def _rate(batches, *, cuda: bool) -> float:
    """img/s after the first batch (workers up, decoder warm), to the last one done."""
    count, start = 0, None
    for batch in batches:
        if start is None:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        else:
            count += len(batch.reasons)
    if cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def decode_rate(collection: Collection, device: torch.device, *, batch_size: int,
                workers: int, decoder: str) -> float:
    """img/s of extraction's own device decoding (nvJPEG + resize, a batch ahead), no model."""
    loader, pres, paths = _loader(collection, batch_size=batch_size, workers=workers,
                                  jpeg_bytes=True, pin=True)
    batches = batches_on_device(loader, pres, device, paths, decode_ahead=True, decoder=decoder)
    return _rate((batch for batch, _, _ in batches), cuda=True)


def forward_rate(runner: TrunkRunner, n: int, batch_size: int) -> float:
    size = runner.spec.preprocess.input_size
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           device=runner.device)
    for _ in range(3):  # autocast check, cuDNN autotuning
        runner.submit(pixels)()
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = [runner.submit(pixels) for _ in range(max(1, n // batch_size))]
    for result in results:
        result()
    return len(results) * batch_size / (time.perf_counter() - start)


def end_to_end(collection: Collection, *, batch_size: int, workers: int, device: str,
               precision: str, decode: str = "device",
               jpeg_decoder: str = "auto") -> tuple[float, float, float | None]:
    """(img/s from the first batch to the committed file, img/s of the whole call,
    share of the images decoded by Pillow with ``decode="device+pillow"``).

    A first extraction of a few batches warms up what a long run pays once
    (CUDA context, cuDNN plans, the nvJPEG decoder, the autocast check).
    """
    warm = Collection(name="warmup", root=collection.root, ids=collection.ids[:2 * batch_size],
                      labels={})
    with tempfile.TemporaryDirectory() as cache:
        config = ExtractConfig(backbones="resnet50", weights="random", cache_root=cache,
                               batch_size=batch_size, workers=workers, device=device,
                               precision=precision, decode=decode, progress=False,
                               jpeg_decoder=jpeg_decoder)
        extract(warm, config)
        [report] = extract(collection, config)
    assert report.n_rows == len(collection), report
    pillow = None if report.device_decoded is None else 1 - report.device_decoded / len(collection)
    return len(collection) / report.stream_seconds, len(collection) / report.seconds, pillow


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", help="folder-per-class images (default: synthetic JPEGs)")
    parser.add_argument("--repeat", type=int, default=1, help="use --images K times (hard links)")
    parser.add_argument("--n", type=int, default=20000, help="synthetic images (default: 20000)")
    parser.add_argument("--size", default="500x375", help="synthetic WxH (default: 500x375)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int,
                        default=default_workers("cuda" if torch.cuda.is_available() else "cpu"))
    parser.add_argument("--decode", default="device", choices=["device", "cpu"],
                        help="end to end with nvJPEG (device, the default) or Pillow in the "
                             "workers (cpu)")
    parser.add_argument("--jpeg-decoder", default="all",
                        choices=["all", "auto", *JPEG_DECODERS],
                        help="the library that calls nvJPEG, for decode only and end to end "
                             "with --decode device (default: all: each one that imports)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--watchdog", type=float, default=0,
                        help="dump every thread's stack and exit after this many seconds")
    args = parser.parse_args()
    if args.watchdog:
        faulthandler.dump_traceback_later(args.watchdog, exit=True)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: GPU path skipped; the loader and the CPU path on 512 synthetic "
              "images instead")
        args.n, args.batch_size, args.images = 512, 32, None
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            collection = repeated_collection(args.images, Path(tmp), args.repeat)
            what = f"{args.images} x{args.repeat}"
        else:
            size = tuple(int(v) for v in args.size.split("x"))
            collection = synthetic_collection(Path(tmp), args.n, size)
            what = f"synthetic {args.size} JPEG q90"
        bench = Bench("bench_gpu", repeats=args.repeats, settings={
            "images": what, "n": len(collection), "batch_size": args.batch_size,
            "workers": args.workers, "decode": args.decode})
        measure(bench, args, collection, cuda)
        bench.write()


def measure(bench: Bench, args, collection: Collection, cuda: bool) -> None:
    for jpeg_bytes, what in ((False, "Pillow views"), (True, "JPEG bytes")):
        bench.measure(f"loader, {what} ({args.workers} workers)", lambda: loader_rate(
            collection, batch_size=args.batch_size, workers=args.workers,
            jpeg_bytes=jpeg_bytes), unit="img/s")
    run = dict(batch_size=args.batch_size, workers=args.workers)
    if not cuda:
        bench.measure("CPU end to end (fp32, Pillow)", lambda: end_to_end(
            collection, **run, device="cpu", precision="fp32", decode="cpu")[0],
            unit="img/s", warmup=False)
        return
    device = torch.device("cuda")
    spec = get_spec("resnet50")
    runner = TrunkRunner(spec, load_trunk(spec, "random"), device, torch.bfloat16)
    runner.submit(torch.zeros((args.batch_size, 3, 224, 224), dtype=torch.uint8))()
    precision = runner.precision  # bf16, or fp32 when bf16 strays from it
    forward = f"forward only ({precision})"
    bench.measure(forward, lambda: forward_rate(runner, len(collection), args.batch_size),
                  unit="img/s")
    run.update(device="cuda", precision=precision)
    if args.decode == "cpu":
        bench.measure("end to end (Pillow)", lambda: end_to_end(collection, **run,
                                                                decode="cpu")[0],
                      unit="img/s", warmup=False)
        bench.ratio("end to end (Pillow) / forward only", "end to end (Pillow)", forward)
        return
    for decoder in _decoders(args.jpeg_decoder):
        bench.measure(f"decode only, {decoder}", lambda: decode_rate(
            collection, device, batch_size=args.batch_size, workers=args.workers,
            decoder=decoder), unit="img/s")
        for mode in ("device", "device+pillow"):
            label = f"end to end, {decoder}" + (" + Pillow's share" if "+" in mode else " alone")
            bench.measure(label, lambda: end_to_end(collection, **run, decode=mode,
                                                    jpeg_decoder=decoder)[0],
                          unit="img/s", warmup=False)
            bench.ratio(f"{label} / forward only", label, forward)


def _decoders(choice: str) -> list[str]:
    """The JPEG decoder libraries to measure: ``all`` = each one that imports."""
    if choice != "all":
        return [jpeg_decoder(choice)[0]]
    found = []
    for name in JPEG_DECODERS:
        try:
            found.append(jpeg_decoder(name)[0])
        except ValueError as err:
            print(f"{name}: not measured; {err}")
    return found


if __name__ == "__main__":
    main()
