"""Activation memory: checkpointed blocks, and an estimate of a step's peak memory.

Training the ``paper`` preset (full I3D on 32×224×224 clips) keeps gigabytes
of activations alive between the forward and the backward. Activation
checkpointing (Chen et al., "Training Deep Nets with Sublinear Memory Cost",
2016) keeps only each block's input and recomputes the block's internals when
the backward reaches it: the same gradients for one more forward of each block.

A module opts in by having a boolean attribute ``checkpointed`` and running its
body through :func:`run_checkpointed` when it is set (I3D's Inception blocks
do); :func:`checkpoint_blocks` sets it on every such module of a model.
:func:`estimate_memory` says what a training step and an attack step need per
batch size, with and without checkpointing, without allocating or computing
anything (the model runs on the ``meta`` device).

Example::

    from mmrobust.memory import checkpoint_blocks, estimate_memory

    checkpoint_blocks(model)  # -> number of blocks switched (9 for the paper's I3D)
    estimate_memory("paper", 60, batch_sizes=(16,))
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmrobust.presets import build_model, get_preset


# -- checkpointing ---------------------------------------------------------------

def checkpoint_blocks(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing on (or off) for every block of ``model`` that supports it.

    A block supports it when it has a boolean attribute ``checkpointed``. With it
    set, the block keeps only its input for the backward and recomputes its
    internals there; parameters, BatchNorm running statistics, input gradients
    and the random number streams come out as without it.

    Args:
        model: any module; its submodules are searched.
        enabled: True to checkpoint, False to keep activations again.

    Returns:
        How many blocks were switched (0 if the model has none, e.g. HCN alone).
    """
    blocks = [m for m in model.modules() if isinstance(getattr(m, "checkpointed", None), bool)]
    for block in blocks:
        block.checkpointed = enabled
    return len(blocks)


def run_checkpointed(block: nn.Module, function: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``function(*args)``, with the activations it saves for the backward recomputed there instead.

    ``function`` is ``block``'s body; during the recomputation the block's
    buffers are replaced by copies, so that what the forward does to them
    (BatchNorm's running statistics in training mode) happens once per forward,
    not a second time in the backward. The recomputation replays the random
    number state of the forward (dropout masks come out the same).
    """
    return checkpoint(function, *args, use_reentrant=False,
                      context_fn=functools.partial(_checkpoint_contexts, block))


def _checkpoint_contexts(block: nn.Module) -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
    """The contexts of the forward (none) and of the recomputation (scratch buffers)."""
    return contextlib.nullcontext(), _scratch_buffers(block)


@contextlib.contextmanager
def _scratch_buffers(block: nn.Module) -> Iterator[None]:
    """Point ``block``'s buffers at copies while the context is open, then back at the originals.

    The originals are not written to at all (not even restored in place), so
    they stay bit-identical and their autograd version counters untouched.
    """
    originals = [(module, name, buffer) for module in block.modules()
                 for name, buffer in module.named_buffers(recurse=False)]
    for module, name, buffer in originals:
        setattr(module, name, buffer.clone())
    try:
        yield
    finally:
        for module, name, buffer in originals:
            setattr(module, name, buffer)


# -- measuring what autograd keeps ---------------------------------------------------

@dataclass(frozen=True)
class SavedActivations:
    """What one forward keeps alive for its backward, in bytes.

    Attributes:
        total: the storages autograd saves for the backward, each counted once
            however many tensors view it; the model's parameters and buffers
            and the input batch are left out (they are counted on their own).
        largest_output: the largest tensor a module of the model returned.
        largest_block: the most any one checkpointable block saved inside it,
            its input excluded: what the backward recomputes of one block at a
            time once the block is checkpointed (0 for a block that already was).
    """

    total: int
    largest_output: int
    largest_block: int


def saved_activations(model: nn.Module, batch: torch.Tensor | Mapping[str, torch.Tensor]) -> SavedActivations:
    """Run ``model(batch)`` once, as it is set up (mode, checkpointed blocks, inputs that require
    grad), and measure what autograd saves for the backward.

    ``batch`` is what the model takes: a tensor, or a batch dict of them.

    Works alike on real tensors and on the ``meta`` device, where nothing is
    allocated or computed: :func:`estimate_memory` relies on that.
    """
    inputs = [batch] if isinstance(batch, torch.Tensor) else list(batch.values())
    excluded = {_storage_key(t) for t in (*model.parameters(), *model.buffers(), *inputs)}
    saved: dict[int, int] = {}  # storage key -> bytes
    keep_alive: list[torch.Tensor] = []  # a storage key is unique only among live storages
    open_blocks: list[tuple[set[int], set[int]]] = []  # (input keys, keys saved inside) per open block
    block_bytes = [0]
    largest_output = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            saved[key] = tensor.untyped_storage().nbytes()
            keep_alive.append(tensor)
            for _, inside in open_blocks:
                inside.add(key)
        return tensor

    def enter_block(module: nn.Module, args: tuple) -> None:
        open_blocks.append(({_storage_key(a) for a in args if isinstance(a, torch.Tensor)}, set()))

    def leave_block(module: nn.Module, args: tuple, output: Any) -> None:
        inputs, inside = open_blocks.pop()
        block_bytes.append(sum(saved[key] for key in inside - inputs))

    def note_output(module: nn.Module, args: tuple, output: Any) -> None:
        nonlocal largest_output
        if isinstance(output, torch.Tensor):
            largest_output = max(largest_output, output.untyped_storage().nbytes())

    handles = [module.register_forward_hook(note_output) for module in model.modules()]
    for module in model.modules():
        if isinstance(getattr(module, "checkpointed", None), bool):
            handles += [module.register_forward_pre_hook(enter_block), module.register_forward_hook(leave_block)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return SavedActivations(sum(saved.values()), largest_output, max(block_bytes))


def _storage_key(tensor: torch.Tensor) -> int:
    # The storage's identity: views of one storage share it, and unlike the
    # data pointer it is distinct on the meta device too.
    return tensor.untyped_storage()._cdata


# -- estimating a step's peak ----------------------------------------------------------

#: Copies of the input batch alive in an attack step: the clean batch, the adversarial batch and its gradient.
ATTACK_INPUT_COPIES = 3
#: Copies of the input batch alive in an adversarial-training step's own forward and backward: clean and attacked.
ADVERSARIAL_TRAINING_INPUT_COPIES = 2


def estimate_memory(preset_name: str, num_classes: int, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
                    skeleton_shape: tuple[int, int | None, int, int] = (3, None, 25, 2),
                    checkpointed: bool | Sequence[bool] = (False, True)) -> dict[str, Any]:
    """Estimated peak memory of one process's training step and attack step, per batch size.

    The preset's model (without any defense's modules) runs on the ``meta``
    device, so nothing is allocated or computed, and :func:`saved_activations`
    counts what autograd keeps for the backward. Every step's peak is the sum
    of what is alive together at the start of its backward (float32
    throughout; the CUDA context, cuDNN workspaces and the allocator's
    fragmentation come on top):

    * ``training_step`` (clean training, SGD with momentum): parameters and
      buffers + gradients + momentum + activations of a train-mode forward +
      the input batch + transient.
    * ``attack_step`` (one step of an attack, as the protocol runs it): the
      model in eval mode, every modality attacked; parameters and buffers +
      activations + the clean batch, the adversarial batch and its gradient +
      transient. No parameter gradients are stored.
    * ``adversarial_training_step`` (PGD-K adversarial training, any K: each
      PGD step frees its graph before the next): parameters and buffers +
      gradients (the last step's, alive until the next backward) + momentum +
      the larger of the attack's activations with its three batch copies and
      the training forward's activations with two (clean and attacked) +
      transient.

    ``transient`` is twice the largest tensor a module returns: in the
    backward, a layer's output gradient and its input gradient exist together.
    With ``checkpointed``, activations are what stays saved outside the blocks
    plus each block's input, plus the largest block's internals, which the
    backward recomputes one block at a time.

    Args:
        preset_name: ``tiny`` or ``paper`` (see :mod:`mmrobust.presets`).
        num_classes: classes of the fusion head.
        batch_sizes: samples per process.
        skeleton_shape: (C, T, V, M); T None takes the preset's frame count.
        checkpointed: with checkpointed blocks, without, or both (one row each).

    Returns:
        ``{"preset", "num_classes", "input_shapes", "checkpointable_blocks",
        "rows"}``: one row per (batch size, checkpointed), each with its parts
        and the three peaks, all in bytes.
    """
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {tuple(batch_sizes)}")
    preset = get_preset(preset_name)
    shapes = preset.input_shapes(skeleton_shape)
    with torch.device("meta"):
        model = build_model(preset, shapes, num_classes)
    blocks = checkpoint_blocks(model, False)
    parameters = sum(p.nbytes for p in model.parameters())
    model_state = parameters + sum(b.nbytes for b in model.buffers())
    modes = (checkpointed,) if isinstance(checkpointed, bool) else tuple(dict.fromkeys(checkpointed))

    def measure(batch_size: int, train: bool, with_checkpoints: bool) -> SavedActivations:
        model.train(train)
        checkpoint_blocks(model, with_checkpoints)
        # An attack differentiates with respect to the inputs; training does not.
        batch = {m: torch.empty(batch_size, *s, device="meta", requires_grad=not train) for m, s in shapes.items()}
        return saved_activations(model, batch)

    rows = []
    for batch_size in batch_sizes:
        inputs = sum(batch_size * math.prod(s) * 4 for s in shapes.values())  # float32
        plain = {train: measure(batch_size, train, False) for train in (True, False)}
        transient = 2 * max(s.largest_output for s in plain.values())
        for with_checkpoints in modes:
            if with_checkpoints:  # the blocks' inputs stay; one block's internals at a time are recomputed
                training, attack = (measure(batch_size, train, True).total + plain[train].largest_block
                                    for train in (True, False))
            else:
                training, attack = plain[True].total, plain[False].total
            attack_peak = attack + ATTACK_INPUT_COPIES * inputs
            rows.append({
                "batch_size": batch_size, "checkpointed": with_checkpoints, "model": model_state,
                "gradients": parameters, "optimizer_state": parameters, "inputs": inputs,
                "training_activations": training, "attack_activations": attack, "transient": transient,
                "training_step": model_state + 2 * parameters + training + inputs + transient,
                "attack_step": model_state + attack_peak + transient,
                "adversarial_training_step": model_state + 2 * parameters + transient + max(
                    attack_peak, training + ADVERSARIAL_TRAINING_INPUT_COPIES * inputs),
            })
    checkpoint_blocks(model, False)
    return {"preset": preset.name, "num_classes": num_classes,
            "input_shapes": {m: list(s) for m, s in shapes.items()}, "checkpointable_blocks": blocks,
            "rows": rows}
