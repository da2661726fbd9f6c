"""How much can the reconstruction of MNIST's train images move a trained network's score?

    python tools/mnist_reconstruction.py --data-dir ../shared/datasets [--recipe sec4_2] \
        RUN/checkpoints/r02-S784-S500-S10-duplicate-simultaneous-s0.pt ...

The train images in ``../shared/datasets`` are not the original bytes: they were recovered
from PNGs that ``matplotlib.pyplot.imsave(img, cmap='Greys')`` rendered (per-image min-max
normalisation, the Greys colormap, 8-bit channels), by mapping each PNG grey level back to
the original value it most often came from (``../shared/datasets/README.md``). The test
images there are the originals, so the same round trip can be applied to them:

1. render each original test image as imsave did and map it back through the
   most-frequent-original table built on those 10,000 images; the result is checked
   against the README's measurement of the real reconstruction (97.2% of pixels exact,
   at most 1 grey level off, mean absolute error 0.028 levels);
2. score each checkpoint (a runner's ``checkpoints/rNN-<job>.pt`` of ``--recipe``, row NN,
   its best-validation weights) on the original and on the round-tripped version of the
   same images: the test images of the recipe's 6:2:2 split that come from the original
   test file, and all 10,000.

Prints, per checkpoint, the accuracy (strict and argmax) on both versions and the number
of images whose prediction changed. The change is what the reconstruction's pixel errors
can do to a trained network at test time; it bounds how much of a gap to the paper they
can explain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from hnn_bridge.data import load_dataset, split_622
from hnn_bridge.recipe import build_row, load_recipe
from hnn_bridge.training.checkpoint import torch_load
from hnn_bridge.training.loop import score_batch


def imsave_grey(images: np.ndarray) -> np.ndarray:
    """The grey level (R channel) that ``plt.imsave(img, cmap='Greys')`` writes for each pixel."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    norm = (flat - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgba = colormaps["Greys"](norm, bytes=True)
    return rgba[..., 0].reshape(images.shape)


def round_trip(images: np.ndarray) -> np.ndarray:
    """Render as imsave did, then map each grey level to its most frequent original value."""
    png = imsave_grey(images)
    pairs = np.zeros((256, 256), dtype=np.int64)  # [grey level, original value]
    np.add.at(pairs, (png.ravel(), images.ravel()), 1)
    table = pairs.argmax(1).astype(np.uint8)
    return table[png]


@torch.no_grad()
def counts(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output spike counts [N, classes] in eval mode, 500 images at a time."""
    model.eval()
    return torch.cat([model(x[i : i + 500].float() / 255) for i in range(0, len(x), 500)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--recipe", default="sec4_2", help="the recipe whose run wrote the checkpoints")
    p.add_argument("checkpoints", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("mnist", a.data_dir)
    test_file = torch.arange(ds.train_size, len(ds))
    images, labels = ds.images[test_file], ds.labels[test_file]
    original = images.numpy()
    rebuilt = round_trip(original)
    diff = np.abs(rebuilt.astype(int) - original.astype(int))
    print(
        json.dumps(
            {
                "images": len(original),
                "exact_pixels": round(float((diff == 0).mean()), 4),
                "max_error": int(diff.max()),
                "mean_abs_error": round(float(diff.mean()), 4),
            }
        )
    )
    rebuilt_t = torch.from_numpy(rebuilt)
    for path in a.checkpoints:
        saved = torch_load(path)
        name = Path(path).name
        row = load_recipe(a.recipe).rows[int(name[1:3]) - 1]
        if (saved["arch"], saved["settings"]["input_mode"]) != (row.arch, row.settings.input_mode):
            raise SystemExit(
                f"{path} holds {saved['arch']} ({saved['settings']['input_mode']} input), "
                f"not row {row.index} of {a.recipe}"
            )
        model = build_row(row)
        model.load_state_dict(saved["model"])
        in_split = torch.isin(test_file, split_622(ds.labels, seed=row.settings.split_seed).test)
        out0, out1 = counts(model, images), counts(model, rebuilt_t)
        for part, pick in (
            ("split test, from the test file", in_split),
            ("all of the test file", slice(None)),
        ):
            y = labels[pick]
            (s0, a0, _, _), (s1, a1, _, _) = score_batch(out0[pick], y), score_batch(out1[pick], y)
            n = len(y)
            print(
                json.dumps(
                    {
                        "checkpoint": name,
                        "images": part,
                        "n": n,
                        "strict": [round(100 * s0 / n, 2), round(100 * s1 / n, 2)],
                        "argmax": [round(100 * a0 / n, 2), round(100 * a1 / n, 2)],
                        "changed_predictions": int((out0[pick].argmax(1) != out1[pick].argmax(1)).sum()),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
