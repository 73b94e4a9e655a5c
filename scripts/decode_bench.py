"""Time what `train --data` does before its first step, twice: the first run decodes, the second reads the cache.

python scripts/decode_bench.py FOLDER [IMAGE_SIZE]      (set VGGDEPLOY_CACHE_DIR to start from an empty cache)
"""

from __future__ import annotations

import argparse
import time

from vggdeploy.data.dataset import image_folder
from vggdeploy.errors import run_script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder of labelled images, as train --data takes")
    parser.add_argument("image_size", type=int, nargs="?", default=64)
    options = parser.parse_args()
    for attempt in ("first", "second"):
        started = time.perf_counter()
        dataset = image_folder(options.folder, options.image_size, progress=False)
        seconds = time.perf_counter() - started
        print(
            f"{attempt}: {seconds:.2f} s, {dataset.color}, train {tuple(dataset.train_images.shape)}; {dataset.notes[0]}"
        )
    return 0


if __name__ == "__main__":
    run_script(main)
