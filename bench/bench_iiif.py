"""IIIF against disk: the same 1,000 heritage images extracted from a folder and from a
loopback static level-0 server, and the image requests a re-run makes.

    .venv/bin/python bench/bench_iiif.py [--images DIR] [--n 1000] [--version 3] [--repeats 3]
        [--backbones squeezenet1_1,xception]

The images (the first ``--n`` of ../shared/data/heritage/test, sorted) are published
with featbank.data.iiif_static as a IIIF level-0 layout and a Presentation manifest, and
served by Python's stock static server (``python -m http.server``) in a process of its
own, as a museum's static hosting would serve them (on the same cores as the extraction:
a remote museum's server costs this machine nothing). For each backbone (the real
ImageNet weights of ../shared/weights, random weights without them; SqueezeNet 1.1 is the
fastest trunk there is, so the one where fetching has least time to hide, Xception the
seed papers'), each repeat extracts them with extract's defaults into a fresh cache,
first from a copy of the folder and then through ``--iiif``, in turns; images/s
counts from the call to its return (reading the manifest and every download included).
Then a re-run through ``--iiif`` on the last cache: its image requests, read from the
server's log. Written to bench/results/bench_iiif.json.
"""
import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Bench, _die_with_parent  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(site: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``python -m http.server`` on loopback over ``site``; it dies with the bench."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(site)],
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                              preexec_fn=_die_with_parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the loopback server did not start")


def image_requests(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if '.jpg HTTP' in line)


def weights_of(backbone: str) -> str:
    path = SHARED / f"weights/{backbone}-imagenet.pth"
    return str(path) if path.is_file() else "random"


def compare(bench: Bench, backbone: str, files: list, folder: Path, url: str, tmp: Path,
            log: Path) -> None:
    """Disk and IIIF in turns for one backbone, then the image requests of a re-run."""
    import featbank as fb

    caches = iter(tmp / f"{backbone}-cache{k}" for k in range(10 ** 6))
    last = []

    def rate(**source) -> float:
        last[:] = [next(caches)]
        started = time.perf_counter()
        [report] = fb.extract(backbone=backbone, weights=weights_of(backbone), cache=last[0],
                              progress=False, **source)
        assert report.n_rows == len(files), report
        return len(files) / (time.perf_counter() - started)

    disk, through = f"{backbone}: from disk, images/s", f"{backbone}: through IIIF, images/s"
    bench.interleave({disk: (lambda: rate(images=folder), "img/s"),
                      through: (lambda: rate(iiif=url), "img/s")})
    bench.ratio(f"{backbone}: IIIF / disk (goal >= 0.9)", through, disk)
    before = image_requests(log)
    fb.extract(backbone=backbone, weights=weights_of(backbone), cache=last[0], iiif=url,
               progress=False)
    time.sleep(0.5)  # the server's log is line-buffered
    bench.record(f"{backbone}: image requests of a re-run", [image_requests(log) - before] * 3,
                 unit="requests")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "data/heritage/test"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--version", type=int, choices=(2, 3), default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default="squeezenet1_1,xception")
    args = parser.parse_args()
    from featbank.data.iiif_static import write_layout

    files = sorted(p for p in Path(args.images).glob("*/*") if p.is_file())[: args.n]
    backbones = args.backbones.split(",")
    bench = Bench("bench_iiif", repeats=args.repeats, settings={
        "images": args.images, "n": len(files), "backbones": backbones,
        "weights": {b: Path(weights_of(b)).name for b in backbones},
        "presentation": args.version, "server": "python -m http.server (static level 0)"})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "folder"
        for p in files:
            (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, folder / p.parent.name / p.name)
        log = tmp / "server.log"
        server, base = start_server(tmp / "site", log)
        try:
            write_layout([(p, {"genre": p.parent.name}) for p in files], tmp / "site", base,
                         version=args.version)
            for backbone in backbones:
                compare(bench, backbone, files, folder, f"{base}/manifest.json", tmp, log)
        finally:
            server.kill()
            server.wait()
    bench.write()


if __name__ == "__main__":
    main()
