"""The one-run privacy audit of a client's upload (docs/privacy-evidence.md, "Audit"): an empirical lower bound
on epsilon next to the ledger's.

One client holds ``--examples`` training images and, each with probability 1/2, each of ``--canaries``
canaries: test images with a wrong label, a seeded draw. For every setting (``experiments.uploads``: the
project's own client runs one round, its strategy decodes the upload, DP-SGD and DSSGD's SVT included) the
auditor scores each canary from the decoded upload (``flwr_privacy.attacks.audit.canary_scores``), guesses
which ones were in, and turns the correct guesses into a lower bound on epsilon at ``--confidence``
(Steinke, Nasr & Jagielski 2023). The auditor is DP's adversary: it knows the model it sent, the round's
settings and every example of the client but whether each canary is in.

A lower bound above the ledger's epsilon is a bug in the mechanism or in its accounting: the row is flagged
and the command exits with status 1.

    python -m experiments.benchmarks.audit [--dataset mnist|mnist-embedded] [--data-dir DIR] [--model tanh-cnn]
        [--canaries M] [--examples N] [--settings fedavg,fedavg+dp1,dssgd-10+svt1,...] [--confidence 0.95]
        [--train-steps S] [--lr 0.05] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass

import torch

from experiments.benchmarks.inversion import global_model
from experiments.uploads import DELTA, MAX_GRAD_NORM, one_round, parse_setting
from flwr_privacy.attacks.audit import (
    AuditResult,
    audit,
    canary_scores,
    draw_selection,
    example_gradients,
    ledger_exceeded,
)
from flwr_privacy.data import TensorData, load_dataset
from flwr_privacy.models import MODELS, build_model

SETTINGS = "fedavg,fedavg+dp1,fedavg+dp3,fedavg+dp8,dssgd-10,dssgd-10+svt1,dssgd-10+svt8"
DATA = {"mnist": "../shared/data/mnist", "mnist-embedded": ""}
# the canary gradients and the least-squares fit hold canaries x parameters float64 values
MAX_ENTRIES = 400_000_000


@dataclass(frozen=True)
class Row:
    setting: str
    result: AuditResult
    ledger_epsilon: float | None  # None: no DP
    noise_multiplier: float | None
    seconds: float

    @property
    def exceeded(self) -> bool:
        return ledger_exceeded(self.result, self.ledger_epsilon)


@dataclass(frozen=True)
class Canaries:
    """The client's known examples and the m canaries (mislabelled test images), with which ones are in."""

    known: TensorData
    canaries: TensorData
    included: torch.Tensor

    def client_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2's input: the known examples and the included canaries, the client's whole data."""
        chosen = self.included.nonzero().squeeze(1).numpy()
        inside = self.canaries.subset(chosen)
        return torch.cat([self.known.x, inside.x]), torch.cat([self.known.y, inside.y])


def plant(train: TensorData, test: TensorData, examples: int, canaries: int, seed: int) -> Canaries:
    """A seeded draw of the known examples (training images), of the canaries (test images, each label moved
    to another class) and of which canaries are in (probability 1/2 each)."""
    generator = torch.Generator().manual_seed(seed)
    known = train.subset(torch.randperm(len(train), generator=generator)[:examples].numpy())
    drawn = test.subset(torch.randperm(len(test), generator=generator)[:canaries].numpy())
    wrong = (drawn.y + torch.randint(1, test.num_classes, (canaries,), generator=generator)) % test.num_classes
    return Canaries(known, TensorData(drawn.x, wrong), draw_selection(canaries, generator))


def audit_setting(
    setting: str, model: torch.nn.Module, planted: Canaries, args: argparse.Namespace
) -> Row:
    """One round's upload in this setting, scored canary by canary and audited."""
    started = time.perf_counter()
    parsed = parse_setting(setting)
    x, y = planted.client_data()
    upload = one_round(parsed, model, x, y, args.lr, args.seed)
    clip = MAX_GRAD_NORM if parsed.dpsgd_epsilon is not None else None  # the auditor clips as the client does
    known = example_gradients(model, planted.known.x, planted.known.y, clip).sum(0)
    gradients = example_gradients(model, planted.canaries.x, planted.canaries.y, clip)
    scores = canary_scores(upload.observation, known, gradients)
    delta = 0.0 if parsed.svt_epsilon is not None else DELTA  # the SVT's epsilon is a pure one
    result = audit(scores, planted.included, delta, args.confidence)
    return Row(setting, result, upload.epsilon, upload.noise_multiplier, time.perf_counter() - started)


def print_table(rows: list[Row]) -> None:
    """The measured table, in Markdown."""
    print("| setting | canaries | guesses | correct | epsilon lower bound | ledger epsilon | delta | noise mult. | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ledger = "-" if r.ledger_epsilon is None else f"{r.ledger_epsilon:.3g}"
        noise = "-" if r.noise_multiplier is None else f"{r.noise_multiplier:.3g}"
        flag = " **above the ledger**" if r.exceeded else ""
        print(
            f"| {r.setting} | {r.result.canaries} | {r.result.guesses} | {r.result.correct} | {r.result.epsilon:.2f}"
            f"{flag} | {ledger} | {r.result.delta:g} | {noise} | {r.seconds:.0f} |"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATA))
    parser.add_argument("--data-dir", default="", help="default: the shared copy for the data set")
    parser.add_argument("--model", default="tanh-cnn", choices=sorted(MODELS))
    parser.add_argument("--canaries", type=int, default=1000, help="m: canaries, each in with probability 1/2")
    parser.add_argument("--examples", type=int, default=500, help="the client's other (known) training images")
    parser.add_argument("--settings", default=SETTINGS, help="comma-separated (experiments.uploads' names)")
    parser.add_argument("--confidence", type=float, default=0.95, help="1 - beta, of the lower bound")
    parser.add_argument("--train-steps", type=int, default=0, help="SGD steps of 32 images before the round (0: init)")
    parser.add_argument("--lr", type=float, default=0.05, help="the client's local learning rate")
    parser.add_argument("--seed", type=int, default=0, help="the draw of examples, canaries and inclusions")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.canaries < 2 or args.examples < 1 or args.train_steps < 0:
        parser.error(f"--canaries={args.canaries} must be >= 2, --examples={args.examples} >= 1, --train-steps >= 0")
    if not 0 < args.confidence < 1 or not args.lr > 0:
        parser.error(f"--confidence={args.confidence} must be in (0, 1), --lr={args.lr} > 0")
    settings = [s for s in args.settings.split(",") if s]
    if not settings:
        parser.error("--settings names no setting")
    try:
        for setting in settings:
            parse_setting(setting)
    except ValueError as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_dataset(args.dataset, args.data_dir or DATA[args.dataset])
    if args.canaries > len(test) or args.examples > len(train):
        parser.error(f"{args.dataset} has {len(test)} test images for --canaries, {len(train)} for --examples")
    size = sum(p.numel() for p in build_model(args.model, train.in_shape, 10, args.seed).parameters())
    if args.canaries * size > MAX_ENTRIES:
        parser.error(f"--canaries={args.canaries} x {size} parameters of {args.model} is too large: use fewer canaries")
    model = global_model(args.model, train, args.train_steps, args.seed)
    planted = plant(train, test, args.examples, args.canaries, args.seed)
    state = f"after {args.train_steps} SGD steps" if args.train_steps else "at initialisation"
    print(f"$ python -m experiments.benchmarks.audit {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"{args.dataset}, model {args.model} {state} ({size} parameters); one client: {args.examples} images and "
        f"{int(planted.included.sum())} of {args.canaries} canaries; confidence {args.confidence:g}; "
        f"threads {torch.get_num_threads()}"
    )
    rows = []
    for setting in settings:
        row = audit_setting(setting, model, planted, args)
        rows.append(row)
        print(f"  {setting}: {row.result.correct}/{row.result.guesses} right, epsilon >= {row.result.epsilon:.2f}")
    print_table(rows)
    for row in rows:
        if row.exceeded:
            print(f"AUDIT FAILED: {row.setting}'s lower bound {row.result.epsilon:.3g} is above the ledger's "
                  f"{row.ledger_epsilon:.3g}: a bug in the mechanism or its accounting")
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(row.exceeded for row in main()) else 0)
