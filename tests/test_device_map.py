"""device_map loading, and every tensor align_chains creates follows the model's device.

There is no second device here, so the test makes the mistake it guards against visible another
way: while every strategy runs on a policy loaded with a device map, a torch function mode
watches each tensor factory call (``torch.zeros``, ``torch.tensor``, ``torch.arange``, ...) made
directly from align_chains' code. A call that names no device would put its tensor on the CPU
on a GPU machine; such calls are allowed only at the sites listed in ``CPU_BY_DESIGN`` (small
bookkeeping tensors meant for the CPU, whose GPU-side partners are moved there with ``.cpu()``
or ``.to(...)``). Every device that is named must be the model's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import align_chains
from align_chains.engine import SamplingParams
from align_chains.models.policy import load_policy
from align_chains.rewards import CallableReward, ClassifierReward, JudgeReward
from align_chains.strategies import SEA, AdaptiveBestOfN, BestOfN, Darwin, RewardGuided, ValueGuided

PACKAGE = str(Path(align_chains.__file__).parent)
FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.as_tensor,
    torch.randn, torch.rand, torch.randint, torch.eye, torch.linspace,
}  # fmt: skip
# (file, function) of deliberate CPU tensors: each meets only CPU data or is moved explicitly
CPU_BY_DESIGN = {
    ("value_guided.py", "_decode"),  # the beam bookkeeping index (rows of prompt_of_row on CPU)
    ("value_guided.py", "_chunk_values"),  # reward scores, compared on the CPU
    ("implicit.py", "start"),  # the running implicit reward total; each step is added with .cpu()
    ("implicit.py", "_response_logprob"),  # built on the CPU, then moved with .to(device) at once
    ("embedding.py", "soft_scorer"),  # row index, moved to the vectors' device before use
    ("vocab_bridge.py", "_build"),  # the bridge's index vectors, moved to the probs' device per call
    ("decoder.py", "dead_end"),  # grammar dead-end flags live beside the CPU matchers; set with .cpu()
    ("allocation.py", "allocate"),
}


class FactoryWatch(TorchFunctionMode):
    """Records (site, device) of tensor factory calls made directly from align_chains."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(PACKAGE):
                device = kwargs.get("device")
                self.calls.append(
                    (
                        Path(caller.f_code.co_filename).name,
                        caller.f_code.co_name,
                        None if device is None else str(torch.device(device)),
                    )
                )
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from align_chains.testing import tiny_policy

    policy = tiny_policy()
    path = tmp_path_factory.mktemp("tiny-policy-device-map")
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


def _explicit_map(policy_dir) -> dict[str, str]:
    """One entry per top-level module of the model, every one on the CPU (what accelerate takes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(policy_dir)))
    layers = [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    return {"model.embed_tokens": "cpu", **dict.fromkeys(layers, "cpu"), "model.norm": "cpu",
            "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip


@pytest.mark.parametrize("kind", ["whole", "per-module"])
def test_device_mapped_policy_runs_every_strategy_on_the_models_device(policy_dir, smol_tokenizer, kind):
    from transformers import LlamaForSequenceClassification

    from tests.conftest import tiny_llama_config

    device_map = {"": "cpu"} if kind == "whole" else _explicit_map(policy_dir)
    policy = load_policy(str(policy_dir), device_map=device_map)
    assert {str(p.device) for p in policy.model.parameters()} == {"cpu"}
    torch.manual_seed(1)
    classifier = ClassifierReward(
        LlamaForSequenceClassification(tiny_llama_config(smol_tokenizer, num_labels=1)), smol_tokenizer
    )
    length = CallableReward(lambda p, r: float(len(r)), name="length")
    params = SamplingParams(max_new_tokens=6, temperature=0.8, seed=0)
    runs = [
        (BestOfN(n=2), length),
        (AdaptiveBestOfN(budget=2), length),
        (RewardGuided(k=3), classifier),
        (ValueGuided(principle="Be kind.", chunk_tokens=3), length),
        (SEA(chains=1, iterations=2), JudgeReward(policy)),
        (Darwin(n=2, k=1, m=3, cycles=1, mutation_max_tokens=16), length),
    ]
    watch = FactoryWatch()
    with watch:
        for strategy, reward in runs:
            result = strategy.run_batch(["Hi", "Name a fruit."], policy, reward, params)
            assert len(result) == 2 and all(r.text is not None for r in result)
    assert watch.calls, "the watch saw the engine's tensor factories"
    model_device = str(policy.device)
    named = {(f, fn, d) for f, fn, d in watch.calls if d is not None}
    assert {d for _, _, d in named} == {model_device}
    unplaced = sorted({(f, fn) for f, fn, d in watch.calls if d is None} - CPU_BY_DESIGN)
    assert not unplaced, f"tensors created without the model's device (CPU on a GPU machine): {unplaced}"
