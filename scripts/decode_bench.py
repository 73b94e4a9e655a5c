"""Time what `train --data` does before its first step, twice: the first run decodes, the second reads the cache.

python scripts/decode_bench.py FOLDER [IMAGE_SIZE]      (set VGGDEPLOY_CACHE_DIR to start from an empty cache)
"""

from __future__ import annotations

import sys
import time

from vggdeploy.datasets import image_folder


def main(argv: list[str]) -> int:
    folder, size = argv[0], int(argv[1]) if len(argv) > 1 else 64
    for attempt in ("first", "second"):
        started = time.perf_counter()
        dataset = image_folder(folder, size, progress=False)
        seconds = time.perf_counter() - started
        print(
            f"{attempt}: {seconds:.2f} s, {dataset.color}, train {tuple(dataset.train_images.shape)}; {dataset.notes[0]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
