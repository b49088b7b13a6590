"""quickstart, legacy flavour: ServerApp(server_fn=...) with a flwr.server.strategy Strategy."""

import json

from flwr.app import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.algorithms.dssgd import DSSGDConfig
from flwr_privacy.strategies import DGC, DSSGD, FedAvg
from flwr_privacy.wire import arrays_to_model, model_to_arrays, trainable_mask
from quickstart.task import Net, load_data
from quickstart.task import test as test_fn


def server_fn(context: Context) -> ServerAppComponents:
    algorithm = context.run_config["algorithm"]
    net = Net()
    _, testloader = load_data(0, 1)

    def evaluate_fn(server_round, arrays, config):
        arrays_to_model(net, arrays)
        loss, accuracy = test_fn(net, testloader, "cpu")
        return loss, {"accuracy": accuracy}

    def save(record):
        if record["round"] == context.run_config["num-server-rounds"]:
            with open(context.run_config["result-file"], "w") as f:
                json.dump({"history": strategy.history}, f)

    common = dict(
        initial_arrays=model_to_arrays(net),
        evaluate_fn=evaluate_fn,
        fraction_fit=context.run_config["fraction-train"],
        on_round=save,
        seed=0,
    )
    if algorithm == "fedavg":
        strategy = FedAvg(**common)
    elif algorithm == "dgc":
        strategy = DGC(**common, trainable=trainable_mask(net), config=DGCConfig(final_sparsity=0.99), lr=0.05)
    else:
        strategy = DSSGD(**common, trainable=trainable_mask(net), config=DSSGDConfig(gamma=0.01))
    num_rounds = context.run_config["num-server-rounds"]
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
