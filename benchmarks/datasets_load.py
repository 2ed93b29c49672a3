"""How long each dataset takes to load into memory from a cold Python process.

For every case a fresh ``python -c`` subprocess imports ``spiral.envs.datasets`` (timed on its own),
loads the dataset (timed), then, in the same process, times a baseline: just reading and decoding the
raw files (gunzip the IDX files / ``np.load`` the npz / decode the JPEGs), with no resize. The ratio
load / baseline says what the conversion to 64×64 canvases costs on top of reading the data. Each case
runs ``--repeats`` times; the table shows the median (and the fastest) load, and the median CPU
time of the load (all threads; steadier than wall time on a shared machine). The page cache is warm
after the first run, so these are "cold process, warm disk" times.

Two extra rows load Omniglot from an official-layout zip of PNGs (built here from the npz, in a
temporary folder): the first load decodes the 19,280 PNGs, the second uses the decoded cache.

Usage: python benchmarks/datasets_load.py [--data_dir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# Each child prints one JSON line: import time, load time, baseline time, images loaded.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from spiral.envs import datasets
t1 = time.perf_counter()
name, split, data_dir, baseline = sys.argv[1:5]
c1 = time.process_time()
ds = datasets.load_dataset(name, split, data_dir or None)
t2, c2 = time.perf_counter(), time.process_time()
n, shape = len(ds), list(ds.images.shape)
del ds
import gzip, io, zipfile, numpy as np
from PIL import Image
root = datasets.resolve_data_dir(data_dir or None)
t3 = time.perf_counter()
if baseline == "idx":
    prefix = {"train": "train", "test": "t10k"}[split]
    for kind in ("images-idx3", "labels-idx1"):
        gzip.decompress((root / "mnist" / f"{prefix}-{kind}-ubyte.gz").read_bytes())
elif baseline == "npz":
    np.load(root / "omniglot" / (datasets.OMNIGLOT_SETS[split] + ".npz"))["images"]
elif baseline == "jpeg":
    with zipfile.ZipFile(root / "celeba" / "celeba_align_89x109_000001-010000.zip") as z:
        for info in z.infolist():
            if info.filename.endswith(".jpg"):
                np.asarray(Image.open(io.BytesIO(z.read(info))).convert("RGB"))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "baseline_s": t4 - t3 if baseline != "none" else None,
                  "n": n, "shape": shape}))
"""


def run_child(name: str, split: str, data_dir: str, baseline: str, env: dict) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, name, split, data_dir, baseline],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child for {name}/{split} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def build_omniglot_zip(npz_path: pathlib.Path, zip_path: pathlib.Path) -> None:
    """An official-layout images_background.zip of PNGs from the npz (same pixels as the official zip)."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    images = np.load(npz_path)["images"]
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for row, drawings in enumerate(images):
            for drawer, image in enumerate(drawings, 1):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                archive.writestr(f"images_background/a{row // 20}/character{row % 20 + 1:02d}/"
                                 f"{row + 1:04d}_{drawer:02d}.png", buffer.getvalue())


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     platform.processor())
    except OSError:
        model = platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="", help="data folder (default: SPIRAL_DATA_DIR or the user cache)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy
    import PIL

    print(f"# datasets_load  {datetime.date.today().isoformat()}  {machine()}")
    print(f"# python {platform.python_version()}, numpy {numpy.__version__}, pillow {PIL.__version__}")
    env = dict(os.environ)
    cases = [("mnist", "train", "idx"), ("mnist", "test", "idx"), ("omniglot", "train", "npz"),
             ("omniglot", "test", "npz"), ("celeba", "train", "jpeg")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        env["XDG_CACHE_HOME"] = os.path.join(scratch, "cache")  # leave the user's cache alone
        for name, split, baseline in cases:
            runs = [run_child(name, split, args.data_dir, baseline, env) for _ in range(args.repeats)]
            rows.append((f"{name} {split}", runs))
        # Omniglot from the official zip form: the first load decodes PNGs, the next uses the cache.
        from spiral.envs import datasets
        zip_root = pathlib.Path(scratch, "data")
        build_omniglot_zip(datasets.resolve_data_dir(args.data_dir or None) / "omniglot" / "images_background.npz",
                           zip_root / "omniglot" / "images_background.zip")
        rows.append(("omniglot train, zip: decode", [run_child("omniglot", "train", str(zip_root), "none", env)]))
        rows.append(("omniglot train, zip: cached",
                     [run_child("omniglot", "train", str(zip_root), "none", env) for _ in range(args.repeats)]))

    print()
    print("| dataset | images | import s | load s (median) | load s (min) | load CPU s | baseline s | load / baseline | process s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, runs in rows:
        load = statistics.median(r["load_s"] for r in runs)
        baseline = [r["baseline_s"] for r in runs if r["baseline_s"] is not None]
        base = statistics.median(baseline) if baseline else None
        print(f"| {label} | {runs[0]['n']} | {statistics.median(r['import_s'] for r in runs):.2f} | {load:.2f} | "
              f"{min(r['load_s'] for r in runs):.2f} | {statistics.median(r['load_cpu_s'] for r in runs):.2f} | "
              f"{'' if base is None else f'{base:.2f}'} | "
              f"{'' if base is None else f'{load / base:.1f}x'} | {statistics.median(r['process_s'] for r in runs):.2f} |")
    print()
    print("GPU: not measured: no GPU here (the loaders run on the CPU only).")


if __name__ == "__main__":
    main()
