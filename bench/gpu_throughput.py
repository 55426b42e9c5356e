"""ResNet50 training throughput: the plain fp32 loop of the common recipe against the worker's
fast path (bf16 autocast, channels_last, data cached on the device with on-device
augmentation), on synthetic batches and on a cached data set. Prints a table of images/s and
the fast/plain ratios (last).

    python bench/gpu_throughput.py                      # on a GPU: resnet50, batch 256, 224 px
    python bench/gpu_throughput.py --device cpu --arch resnet18 --batch 8 --image-size 32 --iters 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from worker.data import ImageBatches, ImageData, Split, place
from worker.engine import Runtime, train_one_epoch
from worker.schedule import make_optimizer, make_scheduler
from worker.trial import Hyperparameters

# The common recipe; the batch size is the batches' own (SGD and its schedule do not read it).
RECIPE = Hyperparameters(
    lr=0.01,
    momentum=0.9,
    step_size=10,
    gamma=0.1,
    warmup_epochs=0,
    weight_decay=0.0,
    nesterov=False,
    batch_size=0,
    head_lr_mult=1.0,
    label_smoothing=0.0,
)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def synthetic_dataset(n: int, size: int, classes: int, device: torch.device) -> ImageData:
    """A decoded data set as the worker caches it: uint8 images at the stored size."""
    stored = round(size * 256 / 224)
    gen = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        images = torch.randint(0, 256, (count, 3, stored, stored), dtype=torch.uint8, generator=gen)
        return Split(images, torch.randint(0, classes, (count,), generator=gen))

    data = ImageData(split(n), split(max(1, n // 10)), tuple(map(str, range(classes))), size, True)
    return place(data, device) if device.type == "cuda" else data


def timed(run: Callable[[], int], repeats: int, device: torch.device) -> list[float]:
    """images/s of each repeat of `run` (which returns the images it trained on)."""
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        images = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def plain_loop(
    model: torch.nn.Module,
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    device: torch.device,
    tf32: bool = True,
) -> Callable[[], int]:
    """The common recipe as people write it: fp32, NCHW, SGD + StepLR, loss.item() each step.
    PyTorch's defaults let cuDNN run fp32 convolutions as TF32 on tensor cores; `tf32=False`
    makes them (and matrix products) true fp32."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)

    def epoch() -> int:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            model.train()
            seen = 0
            for x, y in batches():
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                loss.item()
                seen += len(y)
            scheduler.step()
            return seen
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    return epoch


def fast_loop(
    model: torch.nn.Module,
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    iters: int,
    device: torch.device,
    compile: bool = False,
    fused: bool = True,
) -> Callable[[], int]:
    """The worker's own train_one_epoch on its runtime (bf16 + channels_last on CUDA, fused
    SGD), with torch.compile as `training.compile: true` adds it."""
    rt = Runtime(device)
    model = model.to(memory_format=torch.channels_last) if rt.cuda else model
    forward = torch.compile(model) if compile else model
    optimizer = make_optimizer(model.parameters(), RECIPE, fused=fused and rt.cuda)
    scheduler = make_scheduler(optimizer, RECIPE, iters)

    def epoch() -> int:
        model.train()
        _, _, images = train_one_epoch(
            forward, optimizer, scheduler, batches(), epoch=0, iters=iters, rt=rt
        )
        return images

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile fast path")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    classes = 100
    n = args.batch * args.iters

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torchvision.models.get_model(args.arch, weights=None, num_classes=classes).to(device)

    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device)

    def synthetic(layout: torch.memory_format) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
        batch = x.contiguous(memory_format=layout)
        return lambda: iter([(batch, y)] * args.iters)

    data = synthetic_dataset(n, args.image_size, classes, device)
    cached = ImageBatches(
        data,
        batch_size=args.batch,
        augment=True,
        seed=0,
        device=device,
        mean=IMAGENET[0],
        std=IMAGENET[1],
        channels_last=device.type == "cuda",
    )
    # The plain loop's cached data set: normalised float tensors in host memory, a DataLoader.
    host = torch.randn(n, 3, args.image_size, args.image_size)
    labels = torch.randint(0, classes, (n,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(host, labels),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
    )
    cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    cells = {
        ("plain fp32", "synthetic"): plain_loop(
            model(), synthetic(torch.contiguous_format), device
        ),
        ("plain strict fp32", "synthetic"): plain_loop(
            model(), synthetic(torch.contiguous_format), device, tf32=False
        ),
        ("worker fast path", "synthetic"): fast_loop(model(), synthetic(cl), args.iters, device),
        ("fast, foreach SGD", "synthetic"): fast_loop(
            model(), synthetic(cl), args.iters, device, fused=False
        ),
        ("plain fp32", "cached data set"): plain_loop(model(), lambda: iter(loader), device),
        ("worker fast path", "cached data set"): fast_loop(
            model(), lambda: cached.train_batches(0), cached.iters_per_epoch(), device
        ),
    }
    if args.compile:
        cells[("fast path + compile", "synthetic")] = fast_loop(
            model(), synthetic(cl), args.iters, device, compile=True
        )
    results = {}
    for key, run in cells.items():
        run()  # warm-up: cudnn autotuning, allocator
        rates = timed(run, args.repeats, device)
        results[key] = rates
        print(
            f"{key[0]:>20} | {key[1]:<15} | median {statistics.median(rates):8.0f} img/s "
            f"| min {min(rates):8.0f} max {max(rates):8.0f}",
            flush=True,
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{args.arch}, batch {args.batch}, {args.image_size} px, {name}, "
        f"torch {torch.__version__}"
    )
    if args.compile:
        fast = statistics.median(results[("fast path + compile", "synthetic")])
        plain = statistics.median(results[("plain fp32", "synthetic")])
        print(f"ratio compiled/plain (synthetic): {fast / plain:.2f}x")
    fast = statistics.median(results[("worker fast path", "synthetic")])
    strict = statistics.median(results[("plain strict fp32", "synthetic")])
    print(f"ratio fast/plain strict fp32 (synthetic): {fast / strict:.2f}x")
    for data_kind in ("synthetic", "cached data set"):
        fast = statistics.median(results[("worker fast path", data_kind)])
        plain = statistics.median(results[("plain fp32", data_kind)])
        print(
            f"ratio fast/plain ({data_kind}): {fast / plain:.2f}x ({fast:.0f} vs {plain:.0f} img/s)"
        )


if __name__ == "__main__":
    main()
