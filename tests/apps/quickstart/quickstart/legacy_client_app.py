"""quickstart, legacy flavour: ClientApp(client_fn=...) with our NumPyClients on the user's DataLoader."""

import torch
from flwr.app import Context
from flwr.client import ClientApp

from flwr_privacy.clients import DGCClient, DSSGDClient, FedAvgClient
from quickstart.task import Net, load_data
from quickstart.task import train as train_fn


def client_fn(context: Context):
    algorithm = context.run_config["algorithm"]
    trainloader, testloader = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    net = Net()
    common = dict(device="cpu", loss_fn=torch.nn.CrossEntropyLoss(), test_data=testloader)
    epochs, lr = context.run_config["local-epochs"], context.run_config["lr"]
    if algorithm == "fedavg":
        client = FedAvgClient(net, trainloader, train_fn=lambda m: train_fn(m, trainloader, epochs, lr, "cpu"), **common)
    elif algorithm == "dgc":
        client = DGCClient(net, trainloader, state=context.state, **common)
    else:
        client = DSSGDClient(
            net, trainloader, state=context.state, train_fn=lambda m: train_fn(m, trainloader, epochs, lr, "cpu"), **common
        )
    return client.to_client()


app = ClientApp(client_fn=client_fn)
