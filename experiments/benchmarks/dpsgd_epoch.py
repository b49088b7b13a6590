"""DP-SGD's cost: one private local epoch against one plain local epoch, same model, data and lot size.

A client's partition (the first ``--examples`` training images of ``--dataset``: the embedded MNIST
by default, ``--dataset mnist --data-dir ../shared/data/mnist`` for one client's share of full MNIST,
6,000 of 60,000), the run's model:

- plain: ``flwr_privacy.training.train_epochs``, mini-batches of B, one epoch;
- private: ``flwr_privacy.privacy.dpsgd.train_epochs_private``, Poisson lots of expected size B, each
  example's gradient clipped (in one pass, ``flwr_privacy.privacy.per_example``), summed and noised by
  ``flwr_privacy.privacy.noise.SecureGaussian`` (float64, from an AES-CTR keystream), one epoch
  (ceil(n / B) lots).

The two alternate, one of each per repeat after a warm-up of each; each time printed is the median
over --repeats and the ratio is the median of the per-repeat ratios.

    python -m experiments.benchmarks.dpsgd_epoch [--model mlp|cnn|...] [--batch-size B] [--threads N]
        [--dataset mnist --data-dir ../shared/data/mnist --examples 6000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.models import build_model
from flwr_privacy.privacy.dpsgd import DPSGDConfig, make_private_model, train_epochs_private
from flwr_privacy.privacy.noise import SecureGaussian
from flwr_privacy.training import SGDSettings, train_epochs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--dataset", default="mnist-embedded")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train, _ = load_dataset(args.dataset, args.data_dir)
    except ValueError as err:
        parser.exit(1, f"error: {err}\n")
    data = TensorData(train.x[: args.examples], train.y[: args.examples])
    device = torch.device("cpu")
    # The same network on both sides: the private one's BatchNorm (if any) made GroupNorm, as DP-SGD needs.
    model = make_private_model(build_model(args.model, data.in_shape, 10, seed=0))
    settings = SGDSettings(lr=0.05, batch_size=args.batch_size)
    # As clients run it: secure noise (a keystream keyed by the OS), not the seeded test-only noise.
    config = DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0)

    def plain() -> None:
        train_epochs(model, data, 1, settings, device, torch.Generator().manual_seed(0))

    def private() -> None:
        gen = torch.Generator().manual_seed(0)
        train_epochs_private(model, data, 1, 0.05, 0.0, 0.0, args.batch_size, config, device, gen)

    steps = math.ceil(len(data) / min(args.batch_size, len(data)))
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sampler = SecureGaussian(size)

    def noise() -> None:  # the epoch's noise alone: a draw of every coordinate per lot
        for _ in range(steps):
            sampler.sample(1.0)

    def insecure_noise() -> None:  # the same count from torch's float32 randn: no cheaper sampler is at hand
        for _ in range(steps):
            torch.randn(size)

    plain(), private(), noise(), insecure_noise()  # warm-up: first-use costs out of the timings
    pairs = [(timed(plain), timed(private)) for _ in range(args.repeats)]
    noise_s = statistics.median(timed(noise) for _ in range(args.repeats))
    insecure_s = statistics.median(timed(insecure_noise) for _ in range(args.repeats))
    plain_s = statistics.median(p for p, _ in pairs)
    private_s = statistics.median(q for _, q in pairs)
    ratio = statistics.median(q / p for p, q in pairs)
    print(f"model {args.model}, {len(data)} examples of {args.dataset}, B={args.batch_size}, "
          f"threads {torch.get_num_threads()}")
    print(f"plain local epoch:   {plain_s:.3f} s")
    print(f"DP-SGD local epoch:  {private_s:.3f} s")
    print(f"ratio private / plain: {ratio:.1f}x")
    print(f"of which the noise, {steps} draws of {size} values: {noise_s:.3f} s ({noise_s / plain_s:.2f}x a plain "
          f"epoch); torch.randn float32, not secure: {insecure_s:.3f} s ({insecure_s / plain_s:.2f}x)")


if __name__ == "__main__":
    main()
