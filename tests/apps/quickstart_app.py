"""A user's Flower app, written the way Flower's PyTorch quickstart is, and our strategies swapped into it.

``tests/apps/quickstart/`` is the app as its user wrote it (Message API on both sides, its own ``Net``
with batch norm, a DataLoader of dict batches, its own ``train`` and loss, and its own top-level
``strategies`` package). ``write_app`` copies it and applies ``SWAPS[algorithm]``: the lines a user
changes to use one of our strategies, as ``docs/flower-apps.md`` shows them. ``LEGACY`` points the
app at its legacy-API flavour (``ServerApp(server_fn=...)`` and our ``NumPyClient``s).
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

TEMPLATE = Path(__file__).parent / "quickstart"

TRAIN_CALL = (
    '    train_loss = train_fn(model, trainloader, context.run_config["local-epochs"], '
    'msg.content["config"]["lr"], device)'
)
USER_TRAIN = (
    'lambda m: train_fn(m, trainloader, context.run_config["local-epochs"], msg.content["config"]["lr"], device)'
)
IMPORT = "from flwr.serverapp.strategy import FedAvg"
CONSTRUCT = "    strategy = FedAvg(fraction_train=fraction_train)"
CLIENT_IMPORT = "from flwr.clientapp import ClientApp"
CLIENT_APP = "app = ClientApp()"

# Per algorithm and file: (line as the user wrote it, the line(s) it becomes).
SWAPS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "fedavg": {
        "quickstart/server_app.py": [(IMPORT, "from flwr_privacy.strategies.message import FedAvg")],
        "quickstart/client_app.py": [
            (CLIENT_IMPORT, CLIENT_IMPORT + "\nfrom flwr_privacy.clients.message import fedavg_train"),
            (TRAIN_CALL, f"    return fedavg_train(msg, context, model, trainloader, train_fn={USER_TRAIN})"),
        ],
    },
    # FedAvg under secure aggregation: the user's own train function stays; the mod masks its model's change.
    "fedavg-secagg": {
        "quickstart/server_app.py": [
            (IMPORT, "from flwr_privacy.strategies.message import FedAvg, SecAggPlus"),
            (CONSTRUCT, "    strategy = FedAvg(fraction_train=fraction_train, secagg=SecAggPlus())"),
        ],
        "quickstart/client_app.py": [
            (CLIENT_IMPORT, CLIENT_IMPORT + "\nfrom flwr_privacy.clients.secagg import secaggplus_mod"),
            (CLIENT_APP, "app = ClientApp(mods=[secaggplus_mod])"),
        ],
    },
    "dgc": {
        "quickstart/server_app.py": [
            (IMPORT, "from flwr_privacy.strategies.message import DGC, DGCConfig"),
            (CONSTRUCT, "    strategy = DGC(lr=0.05, config=DGCConfig(final_sparsity=0.99), fraction_train=fraction_train)"),
        ],
        "quickstart/client_app.py": [
            (CLIENT_IMPORT, CLIENT_IMPORT + "\nfrom flwr_privacy.clients.message import dgc_train"),
            (
                TRAIN_CALL,
                "    return dgc_train(msg, context, model, trainloader, loss_fn=torch.nn.CrossEntropyLoss(), "
                "device=device)",
            ),
        ],
    },
    "dssgd": {
        "quickstart/server_app.py": [
            (IMPORT, "from flwr_privacy.strategies.message import DSSGD, DSSGDConfig"),
            (CONSTRUCT, "    strategy = DSSGD(config=DSSGDConfig(gamma=0.01), fraction_train=fraction_train)"),
        ],
        "quickstart/client_app.py": [
            (CLIENT_IMPORT, CLIENT_IMPORT + "\nfrom flwr_privacy.clients.message import dssgd_train"),
            (TRAIN_CALL, f"    return dssgd_train(msg, context, model, trainloader, train_fn={USER_TRAIN})"),
        ],
    },
}

LEGACY = [
    ('serverapp = "quickstart.server_app:app"', 'serverapp = "quickstart.legacy_server_app:app"'),
    ('clientapp = "quickstart.client_app:app"', 'clientapp = "quickstart.legacy_client_app:app"'),
]


def replace_lines(path: Path, swaps: list[tuple[str, str]]) -> None:
    text = path.read_text()
    for old, new in swaps:
        if text.count(old + "\n") != 1:
            raise AssertionError(f"{path.name}: expected the line {old!r} once")
        text = text.replace(old + "\n", new + "\n")
    path.write_text(text)


def changed_lines(before: str, after: str) -> int:
    """Lines added or replaced, as a reviewer counts them: max(removed, added) per diff hunk."""
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


def write_app(dest: Path, algorithm: str, legacy: bool = False, swap: bool = True) -> dict[str, int]:
    """The user's app in ``dest`` with ``algorithm`` swapped in (``swap``: else as written); returns the
    changed lines per file."""
    shutil.copytree(TEMPLATE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    changes: dict[str, int] = {}
    if not swap:
        return changes
    if legacy:
        replace_lines(dest / "pyproject.toml", LEGACY)
        return changes
    for name, swaps in SWAPS[algorithm].items():
        before = (dest / name).read_text()
        replace_lines(dest / name, swaps)
        changes[name] = changed_lines(before, (dest / name).read_text())
    return changes
