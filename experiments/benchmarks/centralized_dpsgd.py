"""The centralized anchor on this data: DP-SGD on ScatterNet features of the whole training set at once.

Tramer & Boneh's (2021) ScatterNet + linear setting (Poisson lots of expected size 8,192 of 50,000, C = 0.1,
SGD lr 4 with momentum 0.9, 60 epochs, the noise for ``--target-epsilon`` at delta 1e-5 over those steps
by Opacus's RDP search), on one party holding all the images: what a federation can at best match. The
features are ``flwr_privacy.features``' (kymatio, J = 2, L = 8; cached). ``--norm``:

- ``groupnorm``: the project's ``scatter-linear`` model (a GroupNorm of 27 groups, no parameters): what the
  federated runs train;
- ``exact``: each channel standardised by its mean and variance over the training features, computed
  without noise: an upper bound on Tramer & Boneh's private data normalisation (their 67.0 % on CIFAR-10
  used it, and paid part of the budget for it; this pays nothing), then one linear layer.

Prints the test accuracy every ``--epochs / 6`` epochs and at the end.

    python -m experiments.benchmarks.centralized_dpsgd --dataset cifar10 \\
        --data-dir ../shared/data/cifar-10/jpeg-full [--norm groupnorm|exact] [--epochs 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.features import scatternet_features
from flwr_privacy.models import build_model
from flwr_privacy.privacy.dpsgd import DPSGDConfig, PrivateSteps
from flwr_privacy.training import evaluate


def standardised(train: TensorData, test: TensorData) -> tuple[TensorData, TensorData]:
    """Both sets standardised per channel by the training features' mean and variance (no noise)."""
    mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
    std = ((train.x**2).mean(dim=(0, 2, 3), keepdim=True) - mean**2).clamp(min=0).add(1e-5).sqrt()
    return TensorData((train.x - mean) / std, train.y), TensorData((test.x - mean) / std, test.y)


def accuracy(model: torch.nn.Module, test: TensorData) -> float:
    """The test accuracy (``flwr_privacy.training.evaluate``), the model left in training mode."""
    with torch.no_grad():
        _, correct = evaluate(model, test, torch.device("cpu"), batch_size=2000)
    model.train()
    return correct


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default="../shared/data/cifar-10/jpeg-full")
    parser.add_argument("--norm", default="groupnorm", choices=("groupnorm", "exact"))
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=4.0)
    parser.add_argument("--max-grad-norm", type=float, default=0.1)
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.epochs < 1 or not args.lr > 0 or not args.target_epsilon > 0:
        parser.exit(1, "error: --batch-size and --epochs must be >= 1, --lr and --target-epsilon > 0\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train, test = load_dataset(args.dataset, args.data_dir)
    except ValueError as err:
        parser.exit(1, f"error: {err}\n")
    started = time.perf_counter()
    train, test = scatternet_features(train), scatternet_features(test)
    shape = tuple(train.x.shape[1:])
    if args.norm == "exact":
        train, test = standardised(train, test)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()), 10))
    else:
        model = build_model("scatter-linear", shape, 10, seed=0)  # type: ignore[arg-type]
    from opacus.accountants.utils import get_noise_multiplier

    rate = min(args.batch_size, len(train)) / len(train)
    steps = int(args.epochs / rate)
    sigma = get_noise_multiplier(target_epsilon=args.target_epsilon, target_delta=args.delta, sample_rate=rate,
                                 steps=steps, accountant="rdp")
    print(f"{args.dataset}, {len(train)} examples, features {shape} in {time.perf_counter() - started:.0f} s; "
          f"{args.norm}, q = {rate:.4g}, {steps} steps, noise multiplier {sigma:.4g} for epsilon "
          f"{args.target_epsilon:g} at delta {args.delta:g}", flush=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    config = DPSGDConfig(enabled=True, noise_multiplier=sigma, max_grad_norm=args.max_grad_norm, delta=args.delta)
    private = PrivateSteps(model, train, config, args.batch_size, torch.device("cpu"), torch.Generator())
    lots = private.lots()
    for step in range(1, steps + 1):
        private.noisy_gradient(*next(lots))
        optimizer.step()
        if step % max(1, steps // 6) == 0 or step == steps:
            print(f"step {step} (epoch {step * rate:.1f}): test accuracy {accuracy(model, test):.4f}", flush=True)
    private.close()
    print(f"final: test accuracy {accuracy(model, test):.4f} at epsilon {args.target_epsilon:g} ({args.norm})")


if __name__ == "__main__":
    main()
