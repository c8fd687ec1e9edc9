"""Whole training epochs of a CIFAR network with and without HALO, fp32 and bf16: images/s and peak memory.

Synthetic CIFAR-shaped data (random 3x32x32 images and labels; the speed of a step does not depend on the
pixels), kept on the device like ``haloprune train`` keeps real data. Each epoch does what
``haloprune.training.fit`` does per step: a random order, the per-batch crop + flip augmentation, forward and
loss (under bf16 autocast when asked), backward, the SGD step with HALO's fused update of weights and λ
(reference settings, convolutions only), masks re-applied — with the device synchronised before every
clock reading. It needs only torch and haloprune's pydantic-free modules, so it runs on a bare GPU box.

    python benchmarks/cifar_epochs.py --device cuda                       # VGG-16-bn, 50,000 images, 2 epochs
    python benchmarks/cifar_epochs.py --device cpu --width 0.125 --n 2000 --epochs 1   # a CPU smoke run

Prints a markdown table: per (precision, HALO) the seconds of each epoch, images/s of the last epoch
(the first includes warm-up and compilation) and, on CUDA, peak memory.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from haloprune import HALO, apply_masks_, build_model
from haloprune.data.augment import CropFlip

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace, device: torch.device, amp: bool, halo_on: bool) -> dict[str, object]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.n,), generator=g).to(device)
    model = build_model(args.model, in_channels=3, image_size=32, num_classes=10, width=args.width).to(device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups: list[dict] = [{"params": list(model.parameters())}]
    halo = None
    if halo_on:
        halo = HALO(model, xi=1e-8, psi=1e-8, scope="conv").to(device)
        groups.append({"params": list(halo.parameters())})
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    if halo is not None:
        halo.attach(opt)
    aug = CropFlip.for_dataset(CIFAR10_MEAN, CIFAR10_STD, 3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.epochs):
        _sync(device)
        t0 = time.perf_counter()
        order = torch.randperm(args.n, generator=g).to(device)
        for start in range(0, args.n, args.batch):
            idx = order[start : start + args.batch]
            xb = aug.apply(x[idx], aug.draw(len(idx), g))
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(xb), y[idx])
            if halo is not None and halo.in_loss:
                loss = loss + halo()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks_(model)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    finite = bool(torch.isfinite(loss).item()) and all(torch.isfinite(p).all() for p in model.parameters())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "images_per_s": args.n / seconds[-1], "peak_mib": peak, "finite": finite}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="vgg16-bn", choices=["vgg16-bn", "resnet18", "resnet50"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=50_000, help="images per epoch (CIFAR: 50,000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {name}, torch {torch.__version__}, {args.model} width {args.width:g}, batch {args.batch}, "
        f"{args.n} synthetic 3x32x32 images per epoch, threads {torch.get_num_threads()}"
    )
    print("| precision | HALO | seconds per epoch | images/s (last epoch) | peak MiB | finite |")
    print("|---|---|---|---:|---:|---|")
    for precision in args.precisions:
        for halo_on in (False, True):
            r = run(args, device, precision == "bf16", halo_on)
            per_epoch = ", ".join(f"{s:.2f}" for s in r["seconds"])
            print(
                f"| {precision} | {'on' if halo_on else 'off'} | {per_epoch} | {r['images_per_s']:,.0f} | "
                f"{r['peak_mib']:,.0f} | {r['finite']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
