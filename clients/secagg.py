"""SecAgg+ on a Message-API ClientApp: ``ClientApp(mods=[secaggplus_mod])``, the app's ``@app.train()`` as it is.

Flower's own ``secaggplus_mod`` runs the client's side of the protocol (its keys, its Shamir shares, its
masks), but it reads the reply of a legacy ``NumPyClient`` (a FitRes). This mod is Flower's, fronted for
a Message-API reply: the app's train function replies as Flower's quickstart does (the model as an
ArrayRecord under ``"arrays"``, ``"num-examples"`` among its metrics), and what gets masked is the
*change* of the model's floating-point entries against the model the message brought, not the model
itself: a change is small, so it fits SecAgg+'s clipping range and loses less to its quantization. The
reply then carries the app's metrics in the clear and the masked vector (Flower's int64s, all below the
2**32 modulus, re-encoded as uint32: the upload of a float32 model); no array leaves the node.

A change (times the node's weight ``num_examples / max_weight``) beyond the clipping range, or more
examples than ``max_weight``, would be clipped into a wrong sum without a word: the node refuses to send
instead, naming the value, and the server counts it as a drop-out. Any message without SecAgg+'s record
(evaluation, or a round of a strategy without secure aggregation) goes to the app untouched. A strategy
whose clients reply with what adds up as it is (DGC's values at coordinates shared by the round) asks for
a ``"payload"`` upload instead: the reply's float arrays are masked as they are, its integer ones (the
indices, which the server chose) never leave.

Under ``SecAggPlus(dp=DistributedDP(...))`` the server's stage-3 record carries the plan: the change is
clipped to the L2 norm C, the node adds its share of the sum's Gaussian noise
(``flwr_privacy.privacy.distributed``) and weighs 1, as every node does. Under
``SecAggPlus(dp=DistributedDPSGD(...))`` the app's DP-SGD added the node's share of the noise (the
instruction's plan carries the share's multiplier); the change is masked as it is and weighs 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod as flower_secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, ndarray_to_bytes, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr_privacy.strategies.secagg import DP_KEYS, UPLOAD_KEY, WEIGH_ONE_KEY

from flwr_privacy.privacy.distributed import DistributedDP, clip_update, noise_share

__all__ = ["secaggplus_mod"]


def secaggplus_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client for a Message-API ``@app.train()``: masks the change of the model it returns."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get("stage")
    if stage != Stage.COLLECT_MASKED_VECTORS:
        return flower_secaggplus_mod(msg, context, call_next)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    upload = configs.pop(UPLOAD_KEY, "change")
    if upload not in ("change", "payload"):
        raise ValueError(f"the server asks for a {upload!r} upload: not 'change' or 'payload'")
    sent = float_arrays(msg.content.array_records.get("arrays"), "the message") if upload == "change" else {}
    dp = distributed_dp(configs)
    weigh_one = configs.pop(WEIGH_ONE_KEY, False) is True
    metrics: dict[str, Any] = {}

    def train_and_report_change(message: Message, ctxt: Context) -> Message:
        reply = call_next(message, ctxt)
        if reply.has_error():
            raise RuntimeError(f"the app's train function failed: {reply.error.reason}")
        content = reply.content
        metrics.update(content.metric_records.get("metrics", MetricRecord()))
        num_examples = metrics.get("num-examples")
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
            raise ValueError(f"the reply's metrics need a positive integer 'num-examples', got {num_examples!r}")
        trained = float_arrays(content.array_records.get("arrays"), "the reply")
        if upload == "payload":  # the reply's own float arrays (DGC's v at the round's shared coordinates)
            change = [a.astype(np.float64) for a in trained.values()]
        else:
            if list(trained) != list(sent):
                raise ValueError(f"the reply's arrays {list(trained)[:5]} are not the message's {list(sent)[:5]}")
            change = [trained[k].astype(np.float64) - sent[k] for k in sent]
        weight = 1 if weigh_one else num_examples
        if dp is not None:  # clipped, its share of the noise added, and weighed as every other client
            plan, contributors = dp
            change, weight = noise_share(clip_update(change, plan.clipping_norm), plan, contributors), 1
        check_range(change, weight, context)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(change), weight, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    masked = flower_secaggplus_mod(msg, context, train_and_report_change)
    vector = masked.content.config_records[RECORD_KEY_CONFIGS]
    vector[Key.MASKED_PARAMETERS] = narrowed(vector[Key.MASKED_PARAMETERS], context)  # type: ignore[arg-type]
    content = RecordDict({"metrics": MetricRecord(metrics), RECORD_KEY_CONFIGS: vector})
    return Message(content, reply_to=msg)


def narrowed(blobs: list[bytes], context: Context) -> list[bytes]:
    """Flower's masked vector holds int64s below the modulus; below 2**32 they travel as uint32, half the bytes."""
    modulus = int(context.state.config_records[RECORD_KEY_STATE]["mod_range"])  # type: ignore[arg-type]
    if modulus > 2**32:
        return blobs
    return [ndarray_to_bytes(bytes_to_ndarray(b).astype(np.uint32)) for b in blobs]


def distributed_dp(configs: ConfigRecord) -> tuple[DistributedDP, int] | None:
    """The distributed-DP plan and the round's contributors the server sent with stage 3, taken out of the
    record (Flower's mod reads none of them); None without one."""
    values = [configs.pop(key, None) for key in DP_KEYS]
    if all(v is None for v in values):
        return None
    noise_multiplier, clipping_norm, tolerated, contributors = values
    if not isinstance(contributors, int) or isinstance(contributors, bool):
        raise ValueError(f"the server's distributed-DP contributors {contributors!r} is not an int")
    plan = DistributedDP(noise_multiplier, clipping_norm, tolerated=tolerated)  # type: ignore[arg-type]
    return plan, contributors


def float_arrays(record: Any, what: str) -> dict[str, np.ndarray]:
    """The floating-point entries of an ArrayRecord, by key (integer ones, batch norm's counter, never travel)."""
    if not isinstance(record, ArrayRecord):
        raise ValueError(f"{what} carries no ArrayRecord under 'arrays'")
    arrays = {k: a.numpy() for k, a in record.items()}
    return {k: a for k, a in arrays.items() if a.dtype.kind == "f"}


def check_range(change: list[np.ndarray], num_examples: int, context: Context) -> None:
    """Refuse what SecAgg+'s quantization would clip: a weighted change beyond the range, a weight above 1."""
    state = context.state.config_records[RECORD_KEY_STATE]
    max_weight, clipping_range = float(state["max_weight"]), float(state["clipping_range"])  # type: ignore[arg-type]
    if num_examples > max_weight:
        raise ValueError(f"num-examples {num_examples} exceeds SecAgg+'s max_weight {max_weight:g}: raise max_weight")
    weight = num_examples / max_weight
    largest = max((float(np.abs(c).max()) for c in change if c.size), default=0.0)
    if not np.isfinite(largest):
        raise ValueError("the model's change is not finite")
    if largest * weight > clipping_range:
        raise ValueError(
            f"the model's change reaches {largest:.4g} (weighted {largest * weight:.4g}), beyond SecAgg+'s "
            f"clipping range {clipping_range:g}: raise clipping_range"
        )
