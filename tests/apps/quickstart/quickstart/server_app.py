"""quickstart: a Flower / PyTorch app."""

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from quickstart.task import Net, load_data
from quickstart.task import test as test_fn
from strategies import learning_rate

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    fraction_train: float = context.run_config["fraction-train"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = learning_rate(1, context.run_config["lr"])

    # Load global model
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # Initialize strategy
    strategy = FedAvg(fraction_train=fraction_train)

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    # Save final model and results to disk
    print("\nSaving final model to disk...")
    state_dict = result.arrays.to_torch_state_dict()
    torch.save(state_dict, "final_model.pt")
    with open(context.run_config["result-file"], "w") as f:
        json.dump(
            {
                "accuracy": {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()},
                "client_eval": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
                "final_accuracy": test_fn(load_state(state_dict), load_data(0, 1)[1], "cpu")[1],
                "history": getattr(strategy, "history", None),
            },
            f,
        )


def load_state(state_dict) -> Net:
    model = Net()
    model.load_state_dict(state_dict)
    return model


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Evaluate model on central data."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    _, test_dataloader = load_data(0, 1)
    test_loss, test_acc = test_fn(model, test_dataloader, "cpu")
    return MetricRecord({"accuracy": test_acc, "loss": test_loss})
