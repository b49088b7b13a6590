"""SecAgg+ (Bell et al. 2020) for Message-API strategies: the server learns only the sum of the updates.

Flower 1.42 runs SecAgg+ only in its legacy API (``SecAggPlusWorkflow``). This is the server side of the
same protocol for ``strategy.start(grid=...)``; the client side is Flower's own ``secaggplus_mod``,
fronted for Message-API replies by ``flwr_privacy.clients.secagg.secaggplus_mod``. Every cryptographic
step is Flower's (``flwr.common.secure_aggregation``, ``flwr.supercore.primitives``): ECDH key agreement,
Shamir's shares, authenticated encryption of the shares, masks expanded from seeds, quantization.

One training round is the protocol's four stages (Bell et al., Fig. 1; the sets U1 >= U2 >= U3 >= U4):

1. ``setup``: the sampled nodes get the parameters and answer with two public keys (U1).
2. ``share_keys``: each gets its neighbours' keys and answers with its mask seed b and key sk1 cut into
   Shamir shares, one encrypted for each neighbour (U2).
3. ``collect_masked_vectors``: each gets the training instruction with the shares addressed to it,
   trains, and answers with its quantized, weighted update (FedAvg: the change of the model; DGC: its v at
   the round's shared coordinates) plus its own mask PRG(b) and a pairwise mask for every neighbour in U2
   (U3). In the sum over U3 the pairwise masks of two members cancel.
4. ``unmask``: each member of U3 sends, for each neighbour, the share of b (a member of U3) or of sk1
   (a member of U2 that sent no vector). With ``threshold`` shares the server removes each survivor's
   PRG(b) and each drop-out's pairwise masks with the survivors; it never asks for both of one node.

Stages 1-2 run in ``open`` (from ``configure_train``, whose messages are stage 3's), stage 4 in ``close``
(from ``aggregate_train``). A node that drops before it shared its keys is simply out of the round (no one
masked with it); one that drops later is recovered from its shares, as long as every node keeps at least
``threshold`` live neighbours. What a node sends is checked before it is used (types, lengths, addressees,
shapes, the vector's range); a bad answer counts as that node dropping at that stage.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from flwr_privacy.privacy.distributed import DistributedDP, DistributedDPSGD

__all__ = ["DistributedDP", "DistributedDPSGD", "SecAggPlus", "SecAggPlusRound", "SecAggOutcome", "SecAggError"]

# Keys of stage 3's record that carry the distributed-DP plan to the clients (Flower's mod reads none of them).
DP_KEYS = ("dp-noise-multiplier", "dp-clipping-norm", "dp-tolerated", "dp-contributors")
WEIGH_ONE_KEY = "weigh-one"  # stage 3, under DistributedDPSGD: every node weighs 1, its DP-SGD added the noise
UPLOAD_KEY = "upload"  # stage 3: "change" (of the model the message brought) or "payload" (the reply's arrays)


class SecAggError(ValueError):
    """The round cannot be unmasked (too few live neighbours or shares); the global model stays as it was."""


@dataclass(frozen=True)
class SecAggPlus:
    """SecAgg+'s settings under Flower's ``SecAggPlusWorkflow``'s names, with its defaults where it has any
    (it has none for ``num_shares`` and ``reconstruction_threshold``).

    Args:
        num_shares: neighbours each node shares its secrets with, itself included (an int >= 3, or a
            fraction of the round's nodes). SecAgg+ masks with these neighbours only, not with everyone.
        reconstruction_threshold: shares needed to rebuild a secret (an int, or a fraction of
            ``num_shares``); also the fewest live neighbours every node must keep. Higher: more honest
            nodes needed to unmask anyone; lower: more drop-outs tolerated.
        max_weight: the largest example count a node may claim; each update is weighted by
            ``num_examples / max_weight`` before quantization.
        clipping_range: updates (the change of the model, times that weight) must lie in
            [-clipping_range, clipping_range]; a node whose update does not refuses to send it.
        quantization_range: levels over [-clipping_range, clipping_range] (2**22: 22 bits).
        modulus_range: masks and sums are modulo this power of two (2**32).
        timeout: seconds to wait for each stage's answers (None: until all have answered).
        dp: distributed DP (``DistributedDP``): each client clips its change to ``clipping_norm`` and adds
            its share of Gaussian noise, so that the sum the server unmasks is already private; every
            client then weighs the same (weight 1: the noise is calibrated to a sum, not to a weighted mean).
            Or sample-level DP-SGD whose noise the clients add in shares (``DistributedDPSGD``, with the
            strategy's ``dpsgd`` plan): every client weighs 1 too.
    """

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.5
    max_weight: float = 1000.0
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    timeout: float | None = None
    dp: DistributedDP | DistributedDPSGD | None = None

    @property
    def weight_cap(self) -> float:
        """The weight every reply is divided by before quantization: ``max_weight``, or 1 under ``dp``."""
        return 1.0 if self.dp is not None else float(self.max_weight)

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not number(self.num_shares) or self.num_shares <= 0:
            raise ValueError(f"num_shares={self.num_shares!r} must be a positive int or fraction")
        if isinstance(self.num_shares, int) and self.num_shares < 3:
            raise ValueError(f"num_shares={self.num_shares} must be at least 3 (or a fraction of the nodes)")
        if isinstance(self.num_shares, float) and self.num_shares > 1:
            raise ValueError(f"num_shares={self.num_shares} as a fraction must be at most 1")
        threshold = self.reconstruction_threshold
        if not number(threshold) or threshold <= 0:
            raise ValueError(f"reconstruction_threshold={threshold!r} must be a positive int or fraction")
        if isinstance(threshold, float) and threshold > 1:
            raise ValueError(f"reconstruction_threshold={threshold} as a fraction must be at most 1")
        if isinstance(threshold, int) and isinstance(self.num_shares, int) and threshold > self.num_shares:
            raise ValueError(f"reconstruction_threshold={threshold} exceeds num_shares={self.num_shares}")
        if not number(self.max_weight) or not self.max_weight > 0:
            raise ValueError(f"max_weight={self.max_weight!r} must be a positive number")
        if not number(self.clipping_range) or not self.clipping_range > 0:
            raise ValueError(f"clipping_range={self.clipping_range!r} must be a positive number")
        if not isinstance(self.quantization_range, int) or self.quantization_range < 2:
            raise ValueError(f"quantization_range={self.quantization_range!r} must be an integer of at least 2")
        modulus = self.modulus_range
        if not isinstance(modulus, int) or modulus <= self.quantization_range or modulus & (modulus - 1):
            raise ValueError(f"modulus_range={modulus!r} must be a power of 2 above quantization_range")
        if modulus > 2**32:
            raise ValueError(f"modulus_range={modulus} must be at most 2**32 (Flower's masks are drawn below it)")
        if self.timeout is not None and not (number(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout={self.timeout!r} must be a positive number of seconds or None")
        if self.dp is not None and not isinstance(self.dp, (DistributedDP, DistributedDPSGD)):
            raise TypeError(f"dp must be a DistributedDP or a DistributedDPSGD, got {type(self.dp).__name__}")

    def shares_and_threshold(self, num_nodes: int) -> tuple[int, int]:
        """The round's number of shares and threshold for ``num_nodes`` sampled nodes (Flower's rules)."""
        if isinstance(self.num_shares, float):
            shares = round(self.num_shares * num_nodes)
            if shares < num_nodes and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = num_nodes
        else:
            shares = self.num_shares
        shares = min(shares, num_nodes)
        if shares < num_nodes and shares % 2 == 0:
            shares += 1  # neighbourhoods are symmetric: a node, and (shares - 1) / 2 on each side of it
        if isinstance(self.reconstruction_threshold, float):
            threshold = max(2, round(self.reconstruction_threshold * shares))
        else:
            threshold = self.reconstruction_threshold
        if threshold > shares:
            raise SecAggError(
                f"reconstruction_threshold {threshold} exceeds the {shares} shares {num_nodes} nodes allow: "
                "sample more nodes or lower reconstruction_threshold"
            )
        return shares, threshold

    def largest_sum(self, num_nodes: int) -> int:
        """The largest value a sum of ``num_nodes`` quantized updates reaches (weights included)."""
        return num_nodes * self.quantization_range


@dataclass
class SecAggOutcome:
    """What a round of SecAgg+ gave the server: the weighted mean of the survivors' updates (float64, in
    the model's shapes; None if it could not be unmasked), who survived, who dropped and why (their updates
    are not in the sum), and which survivors failed to help unmask (their updates are)."""

    mean_update: list[np.ndarray] | None
    survivors: list[Message]
    dropped: dict[int, str]
    late: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    contributors: int = 0  # the nodes that were asked for a masked vector (U2)


def config_nbytes(record: ConfigRecord) -> int:
    """Bytes of a ConfigRecord's values and keys (bytes and str by length, numbers as 8), empty lists too."""
    total = 0
    for key, value in record.items():
        total += len(key)
        for item in value if isinstance(value, list) else [value]:
            total += len(item) if isinstance(item, (bytes, str)) else 8
    return total


def stage_record(answer: Message) -> ConfigRecord:
    """A node's SecAgg+ answer record, or why there is none."""
    if answer.has_error():
        raise ValueError(f"client error: {answer.error.reason}")
    if not answer.has_content() or RECORD_KEY_CONFIGS not in answer.content.config_records:
        raise ValueError(f"the answer carries no {RECORD_KEY_CONFIGS!r} record")
    return answer.content.config_records[RECORD_KEY_CONFIGS]


def list_of(record: ConfigRecord, key: str, kind: type) -> list[Any]:
    value = record.get(key, [])
    if not isinstance(value, list) or any(type(v) is not kind for v in value):
        raise ValueError(f"{key!r} must be a list of {kind.__name__}")
    return value


@dataclass
class SecAggPlusRound:
    """One round of SecAgg+ for the server: ``open`` runs stages 1-2 and returns stage 3's messages,
    ``close`` takes their answers, runs stage 4 and returns the unmasked mean (``SecAggOutcome``)."""

    settings: SecAggPlus
    grid: Grid
    server_round: int
    shapes: list[tuple[int, ...]]
    on_traffic: Callable[[int, int], None] = lambda down, up: None  # bytes of each stage's messages
    upload: str = "change"  # what the clients mask: the change of the model, or their reply's arrays as sent
    sampled: list[int] = field(default_factory=list)
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shared_keys: set[int] = field(default_factory=set)  # U2
    dropped: dict[int, str] = field(default_factory=dict)
    late: dict[int, str] = field(default_factory=dict)  # survivors of stage 3 that failed stage 4
    threshold: int = 0
    seconds: float = 0.0
    error: str | None = None  # why ``open`` could not start the round (set by the strategy that caught it)

    def message(self, node: int, content: RecordDict) -> Message:
        return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node,
                       group_id=str(self.server_round))

    def exchange(self, messages: list[Message]) -> dict[int, Message]:
        """Send one stage's messages and collect the answers by node (the first from each)."""
        down = sum(config_nbytes(m.content.config_records[RECORD_KEY_CONFIGS]) for m in messages)
        answers = self.grid.send_and_receive(messages, timeout=self.settings.timeout)
        by_node: dict[int, Message] = {}
        up = 0
        for answer in answers:
            node = answer.metadata.src_node_id
            if not answer.has_error() and answer.has_content():
                up += sum(config_nbytes(r) for r in answer.content.config_records.values())
            by_node.setdefault(node, answer)
        self.on_traffic(down, up)
        return by_node

    def drop(self, node: int, reason: str) -> None:
        self.dropped.setdefault(node, reason)

    def live(self, nodes: set[int]) -> set[int]:
        return {n for n in nodes if n not in self.dropped}

    def check_neighbourhoods(self, members: set[int], stage: str) -> None:
        """Every node still in the protocol keeps ``threshold`` live neighbours (itself included)."""
        for node in members:
            alive = len(self.neighbours[node] & members)
            if alive < self.threshold:
                raise SecAggError(
                    f"SecAgg+ {stage}: node {node} has {alive} live neighbours, fewer than the threshold "
                    f"{self.threshold}; too many nodes dropped out"
                )

    def open(self, nodes: Sequence[int], contents: Sequence[RecordDict]) -> list[Message]:
        """Stages 1-2 with ``nodes``; stage 3's messages: each node's training ``contents`` plus the shares
        addressed to it. Raises ``SecAggError`` if too few nodes remain."""
        started = time.perf_counter()
        self.sampled = list(nodes)
        if len(self.sampled) < 2:
            raise SecAggError(f"SecAgg+ needs at least 2 nodes in a round, {len(self.sampled)} sampled")
        if self.settings.largest_sum(len(self.sampled)) >= self.settings.modulus_range:
            raise SecAggError(
                f"{len(self.sampled)} nodes' quantized updates overflow modulus_range "
                f"{self.settings.modulus_range}: raise it or lower quantization_range"
            )
        num_shares, self.threshold = self.settings.shares_and_threshold(len(self.sampled))
        self.assign_neighbours(num_shares)
        u1 = self.setup(num_shares)
        self.shared_keys, forwarded = self.share_keys(u1)
        dp = self.settings.dp
        if dp is not None and len(self.shared_keys) <= dp.tolerated:
            raise SecAggError(
                f"{len(self.shared_keys)} nodes shared keys, not more than {type(dp).__name__}'s "
                f"tolerated={dp.tolerated}: "
                "their noise cannot be calibrated"
            )
        messages = []
        for node, content in zip(self.sampled, contents):
            if node not in self.shared_keys:
                continue
            sources, ciphertexts = forwarded[node]
            content = RecordDict(dict(content.items()))  # the caller's content stays as it was
            content[RECORD_KEY_CONFIGS] = ConfigRecord({
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: sources,
                UPLOAD_KEY: self.upload, **self.dp_settings(),
            })
            messages.append(self.message(node, content))
        self.seconds += time.perf_counter() - started
        return messages

    def dp_settings(self) -> dict[str, int | float]:
        """The distributed-DP plan for stage 3's record, with the round's contributors (U2)."""
        dp = self.settings.dp
        if dp is None:
            return {}
        if isinstance(dp, DistributedDPSGD):  # the noise is in the DP-SGD plan the instruction carries
            return {WEIGH_ONE_KEY: True}
        values = (float(dp.noise_multiplier), float(dp.clipping_norm), dp.tolerated, len(self.shared_keys))
        return dict(zip(DP_KEYS, values))

    def assign_neighbours(self, num_shares: int) -> None:
        """Nodes on a ring in random order; each is the neighbour of the num_shares // 2 on either side."""
        ring = list(self.sampled)
        secrets.SystemRandom().shuffle(ring)
        half = num_shares // 2
        self.neighbours = {
            node: {ring[(i + offset) % len(ring)] for offset in range(-half, half + 1)} for i, node in enumerate(ring)
        }

    def setup(self, num_shares: int) -> set[int]:
        """Stage 1: the parameters out, two distinct public keys back from each node (U1)."""
        settings = self.settings
        parameters = ConfigRecord({
            Key.STAGE: Stage.SETUP,
            Key.SAMPLE_NUMBER: len(self.sampled),
            Key.SHARE_NUMBER: num_shares,
            Key.THRESHOLD: self.threshold,
            Key.CLIPPING_RANGE: float(settings.clipping_range),
            Key.TARGET_RANGE: settings.quantization_range,
            Key.MOD_RANGE: settings.modulus_range,
            Key.MAX_WEIGHT: settings.weight_cap,
        })
        answers = self.exchange([self.message(n, RecordDict({RECORD_KEY_CONFIGS: parameters})) for n in self.sampled])
        for node in set(self.sampled) - set(answers):
            self.drop(node, "SecAgg+ setup: no answer")
        seen: dict[bytes, int] = {}
        for node, answer in answers.items():
            try:
                record = stage_record(answer)
                pk1, pk2 = record.get(Key.PUBLIC_KEY_1), record.get(Key.PUBLIC_KEY_2)
                if not (isinstance(pk1, bytes) and isinstance(pk2, bytes)):
                    raise ValueError("its public keys are not two byte strings")
                keys = (pk1, pk2)
                for key in keys:
                    bytes_to_public_key(key)  # a well-formed key, or the node is out
                if keys[0] == keys[1] or any(k in seen for k in keys):
                    raise ValueError("it sent a public key already in use")
            except Exception as err:  # a malformed answer is that node dropping at this stage
                self.drop(node, f"SecAgg+ setup: {err}")
                continue
            for key in keys:
                seen[key] = node
            self.public_keys[node] = keys
        u1 = self.live(set(self.public_keys))
        self.check_neighbourhoods(u1, "setup")
        return u1

    def share_keys(self, u1: set[int]) -> tuple[set[int], dict[int, tuple[list[int], list[bytes]]]]:
        """Stage 2: each node of U1 gets its live neighbours' keys, and sends one encrypted share to each (U2).
        Returns U2 and, per member, the (sources, ciphertexts) forwarded to it."""
        messages = []
        for node in sorted(u1):
            record = ConfigRecord({str(n): list(self.public_keys[n]) for n in self.neighbours[node] & u1})
            record[Key.STAGE] = Stage.SHARE_KEYS
            messages.append(self.message(node, RecordDict({RECORD_KEY_CONFIGS: record})))
        answers = self.exchange(messages)
        for node in u1 - set(answers):
            self.drop(node, "SecAgg+ share keys: no answer")
        sent: dict[int, dict[int, bytes]] = {}
        for node, answer in answers.items():
            try:
                record = stage_record(answer)
                destinations = list_of(record, Key.DESTINATION_LIST, int)
                ciphertexts = list_of(record, Key.CIPHERTEXT_LIST, bytes)
                expected = (self.neighbours[node] & u1) - {node}
                if len(destinations) != len(ciphertexts) or set(destinations) != expected:
                    raise ValueError("its encrypted shares are not one for each of its neighbours")
            except Exception as err:
                self.drop(node, f"SecAgg+ share keys: {err}")
                continue
            sent[node] = dict(zip(destinations, ciphertexts))
        u2 = self.live(set(sent))
        self.check_neighbourhoods(u2, "share keys")
        forwarded = {
            node: ([s for s in sorted(u2) if node in sent[s]], [sent[s][node] for s in sorted(u2) if node in sent[s]])
            for node in u2
        }
        return u2, forwarded

    def masked_vector(self, answer: Message) -> list[np.ndarray]:
        """A node's stage-3 vector: one (1,) weight and one array per model shape, integers in [0, modulus)."""
        record = stage_record(answer)
        blobs = list_of(record, Key.MASKED_PARAMETERS, bytes)
        shapes = [(1,), *self.shapes]
        if len(blobs) != len(shapes):
            raise ValueError(f"the masked vector has {len(blobs)} arrays, not {len(shapes)}")
        vector = []
        for blob, shape in zip(blobs, shapes):
            array = bytes_to_ndarray(blob)
            if array.shape != shape or array.dtype.kind not in "iu":
                raise ValueError(f"a masked array of shape {array.shape} and dtype {array.dtype}, not {shape} integers")
            if array.size and (array.min() < 0 or array.max() >= self.settings.modulus_range):
                raise ValueError("a masked value lies outside [0, modulus_range)")
            vector.append(array.astype(np.int64))
        return vector

    def close(self, answers: Sequence[Message], accept: Callable[[Message], None]) -> SecAggOutcome:
        """Stage 3's answers (``accept`` raises on a reply the strategy refuses: its metrics, its count), then
        stage 4; the weighted mean of the survivors' updates."""
        started = time.perf_counter()
        try:
            return self.unmask(answers, accept)
        except SecAggError as err:
            return SecAggOutcome(None, [], dict(self.dropped), dict(self.late), error=str(err),
                                 contributors=len(self.shared_keys))
        finally:
            self.seconds += time.perf_counter() - started

    def unmask(self, answers: Sequence[Message], accept: Callable[[Message], None]) -> SecAggOutcome:
        modulus = self.settings.modulus_range
        total: list[np.ndarray] | None = None
        survivors: dict[int, Message] = {}
        for answer in answers:
            node = answer.metadata.src_node_id
            if node not in self.shared_keys or node in survivors or node in self.dropped:
                continue
            try:
                vector = self.masked_vector(answer)
                accept(answer)
            except Exception as err:  # not in the sum: its masks come off as a drop-out's
                self.drop(node, f"SecAgg+ masked vector: {err}")
                continue
            survivors[node] = answer
            total = vector if total is None else parameters_mod(parameters_addition(total, vector), modulus)
        for node in self.shared_keys - set(survivors):
            self.drop(node, "no masked vector")
        u3 = set(survivors)
        if total is None:
            raise SecAggError("SecAgg+: no node sent a masked vector")
        self.check_neighbourhoods(u3, "collect masked vectors")
        dead = self.shared_keys - u3
        shares = self.collect_shares(u3, dead)
        for node in sorted(u3):  # a survivor's own mask PRG(b)
            seed = self.rebuild(node, shares, "mask seed")
            total = parameters_subtraction(total, pseudo_rand_gen(seed, modulus, [a.shape for a in total]))
        for node in sorted(dead):  # a drop-out's pairwise masks with the survivors that added them
            survivors_around = (self.neighbours[node] & u3) - {node}
            if not survivors_around:
                continue
            secret_key = bytes_to_private_key(self.rebuild(node, shares, "key"))
            for other in sorted(survivors_around):
                shared = generate_shared_key(secret_key, bytes_to_public_key(self.public_keys[other][0]))
                mask = pseudo_rand_gen(shared, modulus, [a.shape for a in total])
                # The survivor added the mask if its id is the larger one, else subtracted it.
                total = parameters_subtraction(total, mask) if other > node else parameters_addition(total, mask)
        total = parameters_mod(total, modulus)
        weight_sum, quantized = factor_extract(total)
        if not weight_sum > 0:
            raise SecAggError("SecAgg+: the unmasked weights sum to zero")
        settings = self.settings
        summed = dequantize(quantized, settings.clipping_range, settings.quantization_range)
        # Each survivor's quantization added clipping_range once; dequantize took off one of them.
        offset = -(len(u3) - 1) * settings.clipping_range
        scale = settings.quantization_range / float(weight_sum)
        mean = [(s + offset) * scale for s in summed]
        ordered = [survivors[n] for n in sorted(u3)]
        return SecAggOutcome(mean, ordered, dict(self.dropped), dict(self.late), contributors=len(self.shared_keys))

    def collect_shares(self, u3: set[int], dead: set[int]) -> dict[int, list[bytes]]:
        """Stage 4: each survivor names, per neighbour, the share it holds: of b for a survivor, of sk1 for a
        drop-out of stage 3. The shares come back by owner."""
        messages = []
        for node in sorted(u3):
            record = ConfigRecord({
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[node] & u3),
                Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[node] & dead),
            })
            messages.append(self.message(node, RecordDict({RECORD_KEY_CONFIGS: record})))
        answers = self.exchange(messages)
        for node in u3 - set(answers):
            self.late.setdefault(node, "SecAgg+ unmask: no answer")
        shares: dict[int, list[bytes]] = {n: [] for n in u3 | dead}
        for node, answer in answers.items():
            try:
                record = stage_record(answer)
                owners = list_of(record, Key.NODE_ID_LIST, int)
                held = list_of(record, Key.SHARE_LIST, bytes)
                asked = self.neighbours[node] & (u3 | dead)
                if len(owners) != len(held) or len(set(owners)) != len(owners) or not set(owners) <= asked:
                    raise ValueError("its shares are not one for each neighbour it was asked about")
            except Exception as err:  # its shares are not used; it survived stage 3, so its update stays in
                self.late.setdefault(node, f"SecAgg+ unmask: {err}")
                continue
            for owner, share in zip(owners, held):
                shares[owner].append(share)
        return shares

    def rebuild(self, node: int, shares: dict[int, list[bytes]], what: str) -> bytes:
        """A node's secret from ``threshold`` of its shares (Flower's Shamir); too few is the round's end."""
        held = [s for s in shares[node] if len(s) >= 4]
        lengths = {len(s) for s in held}
        if len(held) < self.threshold or len(lengths) != 1:
            raise SecAggError(
                f"SecAgg+ unmask: {len(held)} consistent shares of node {node}'s {what}, the threshold is "
                f"{self.threshold}; too many nodes dropped out"
            )
        try:
            return combine_shares(held[: self.threshold])
        except Exception as err:
            raise SecAggError(f"SecAgg+ unmask: node {node}'s {what} cannot be rebuilt: {err}") from err
