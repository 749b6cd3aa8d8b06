"""bf16 end to end on CPU, the stand-in for the GPU path (where chat models pick bf16 by default).

Every strategy, every reward kind, the LangChain chat model and the server run with bf16
models; where bf16 and fp32 should agree, they are compared within the tolerances documented
in docs/gpu.md. The tiny models here are initialised with a larger spread than the default
(``initializer_range=0.2``, logits with a standard deviation near 1 instead of 0.1), so that
bf16's rounding shows in the log-probabilities the way it does on a trained model.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reference.naive_args import NaiveClassifierScorer

from align_chains import BestOfNChatModel
from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.models.policy import Policy
from align_chains.rewards import (
    CallableReward,
    ClassifierReward,
    EmbeddingReward,
    ImplicitReward,
    JudgeReward,
    WeightedReward,
)
from align_chains.rewards.incremental import ClassifierBranchScorer
from align_chains.strategies import SEA, AdaptiveBestOfN, BestOfN, Darwin, RewardGuided, ValueGuided
from tests.conftest import tiny_llama_config

BF16 = torch.bfloat16
PROMPTS = ["Name a fruit.", [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]]
PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)

# Tolerances (docs/gpu.md explains each; measured values on these models in brackets).
LOGPROB_VS_FP32 = 0.15  # nats per token: bf16 engine vs an fp32 full forward of the same tokens [0.062]
LOGPROB_VS_FP32_MEAN = 0.03  # nats, mean over every token of every candidate [0.012]
LOGPROB_VS_BF16_FORWARD = 0.06  # nats per token: bf16 engine (KV cache) vs a bf16 full forward [0.032]
SOFT_VS_HARD = 0.02  # reward units: one-hot soft score vs hard score, both bf16 [0 classifier, 5e-5 judge]
INCREMENTAL_VS_FORWARD = 0.02  # reward units: ARGS's incremental branch scores vs full forwards, bf16 [0]
BF16_VS_FP32_SCORE = 0.05  # reward units: a bf16 classifier or judge vs its fp32 original [0.012]
IMPLICIT_PER_TOKEN = 0.03  # reward units per response token: bf16 vs fp32 implicit reward [0.013]
RESCORED_ALONE = 0.05  # reward units, a bf16 score of a text in its batch vs scored alone (padding)


def _spread_config(tokenizer, **overrides):
    return tiny_llama_config(tokenizer, initializer_range=0.2, **overrides)


@pytest.fixture(scope="module")
def policies(smol_tokenizer) -> tuple[Policy, Policy]:
    """The same tiny Llama in fp32 and in bf16."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    fp32 = LlamaForCausalLM(_spread_config(smol_tokenizer)).eval()
    bf16 = copy.deepcopy(fp32).to(BF16)
    return (
        Policy(model=fp32, tokenizer=smol_tokenizer, name="tiny-fp32"),
        Policy(model=bf16, tokenizer=smol_tokenizer, name="tiny-bf16"),
    )


@pytest.fixture(scope="module")
def classifiers(smol_tokenizer) -> tuple[ClassifierReward, ClassifierReward]:
    """One tiny classifier reward on the policy's vocabulary, in fp32 and in bf16."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    fp32 = LlamaForSequenceClassification(_spread_config(smol_tokenizer, num_labels=1)).eval()
    bf16 = copy.deepcopy(fp32).to(BF16)
    return (
        ClassifierReward(fp32, smol_tokenizer, name="rm-fp32"),
        ClassifierReward(bf16, smol_tokenizer, name="rm-bf16"),
    )


@pytest.fixture(scope="module")
def embedding_bf16() -> EmbeddingReward:
    """The embedded MiniLM, cast to bf16 (its soft scorer feeds it bf16 embeddings)."""
    from sentence_transformers import SentenceTransformer

    from align_chains.models.embedded import minilm_dir

    return EmbeddingReward(SentenceTransformer(str(minilm_dir()), device="cpu").to(BF16))


def _teacher_forced(policy: Policy, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log pi(token) of each response token, from one full forward (no KV cache), in fp32."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = policy.model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


# -- the engine keeps the model's dtype ---------------------------------------------------------------
def test_engine_cache_stays_bf16_and_only_next_token_logits_are_fp32(policies):
    _, bf16 = policies
    decoder = Decoder(bf16, ComputeCounters())
    batch = decoder.start([bf16.render([{"role": "user", "content": "Hi"}])], 3, PARAMS)
    decoder.extend(batch, 4, torch.Generator().manual_seed(0))
    assert all(layer.keys.dtype == BF16 and layer.values.dtype == BF16 for layer in batch.cache.layers)
    logits = decoder.logits(batch)
    # one fp32 row of logits per row for sampling and log-probs, not an upcast cache or model
    assert logits.dtype == torch.float32 and logits.shape == (3, bf16.vocab_size)
    assert batch.logprobs.dtype == torch.float32 and torch.isfinite(batch.logprobs).all()


def test_best_of_n_candidate_logprobs_agree_with_fp32(policies):
    fp32, bf16 = policies
    results = BestOfN(n=4).run_batch(PROMPTS, bf16, CallableReward(lambda p, r: float(len(r))), PARAMS)
    vs_fp32, vs_bf16 = [], []
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = bf16.render([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        for candidate in result.candidates:
            assert candidate.token_ids, "every candidate has tokens to compare"
            ours = torch.tensor(candidate.logprobs)
            vs_fp32.append((ours - _teacher_forced(fp32, ids, candidate.token_ids)).abs())
            vs_bf16.append((ours - _teacher_forced(bf16, ids, candidate.token_ids)).abs())
    vs_fp32, vs_bf16 = torch.cat(vs_fp32), torch.cat(vs_bf16)
    assert vs_fp32.max() <= LOGPROB_VS_FP32 and vs_fp32.mean() <= LOGPROB_VS_FP32_MEAN
    assert vs_bf16.max() <= LOGPROB_VS_BF16_FORWARD
    # not vacuous: bf16 does differ from fp32
    assert vs_fp32.max() > 0


# -- soft scoring: a one-hot response scores as its text ------------------------------------------
def _one_hot(policy: Policy, text: str, rows: int) -> torch.Tensor:
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.nn.functional.one_hot(torch.tensor([ids]), policy.vocab_size).float().expand(rows, -1, -1)


@pytest.mark.parametrize("kind", ["classifier", "judge"])
def test_exact_soft_path_one_hot_equals_hard_score_in_bf16(policies, classifiers, kind):
    _, bf16 = policies
    reward = classifiers[1] if kind == "classifier" else JudgeReward(bf16, principle="Be kind.")
    prompts = ["Tell me about the sea.", "Hi"]
    texts = ["The sea is large and blue.", "Waves."]
    scorer = reward.soft_scorer(prompts, [0, 1], bf16)
    assert scorer.path == "exact"
    hard = reward.score(prompts, texts)
    for row, text in enumerate(texts):
        soft = scorer(_one_hot(bf16, text, 2))
        assert soft.dtype == torch.float32
        assert soft[row].item() == pytest.approx(hard[row], abs=SOFT_VS_HARD)


def test_bf16_reward_scores_agree_with_fp32(policies, classifiers):
    fp32, bf16 = policies
    prompts, texts = ["Tell me about the sea."] * 2, ["The sea is large and blue.", "Waves crash."]
    tokens = [len(fp32.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    pairs = [
        (classifiers[0], classifiers[1], [BF16_VS_FP32_SCORE] * 2),
        (
            JudgeReward(fp32, principle="Be kind."),
            JudgeReward(bf16, principle="Be kind."),
            [BF16_VS_FP32_SCORE] * 2,
        ),
        (
            ImplicitReward(fp32, principle="Be kind."),
            ImplicitReward(bf16, principle="Be kind."),
            [IMPLICIT_PER_TOKEN * n for n in tokens],  # a sum of per-token log-ratios
        ),
    ]
    for reference, reduced, tolerances in pairs:
        scores = zip(reference.score(prompts, texts), reduced.score(prompts, texts), tolerances, strict=True)
        for a, b, tolerance in scores:
            assert math.isfinite(b) and b == pytest.approx(a, abs=tolerance)


# -- ARGS: incremental branch scores ------------------------------------------------------------------
def test_incremental_args_scores_equal_full_forwards_in_bf16(policies, classifiers):
    _, bf16 = policies
    reward = classifiers[1]
    counters = ComputeCounters()
    scorer = ClassifierBranchScorer(reward, bf16, counters)
    naive = NaiveClassifierScorer(reward, counters)
    convs = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "A much longer question?"}]]
    for s in (scorer, naive):
        s.start(convs, [0, 1], 8)
    alive = torch.tensor([True, True])
    for step in range(4):
        candidates = torch.randint(0, 1000, (2, 4), generator=torch.Generator().manual_seed(step))
        ours, reference = scorer.score(candidates, alive), naive.score(candidates, alive)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, reference, atol=INCREMENTAL_VS_FORWARD, rtol=0)
        column = torch.tensor([step % 4, (step + 1) % 4])
        tokens = candidates.gather(-1, column[:, None]).squeeze(-1)
        scorer.commit(column, tokens)
        naive.commit(column, tokens)
    assert all(layer.keys.dtype == BF16 for layer in scorer.cache.layers)


# -- SEA: fp32 optimisation whatever the model's dtype --------------------------------------------
def test_sea_keeps_its_variable_and_adam_state_in_fp32_on_a_bf16_policy(policies, classifiers, monkeypatch):
    _, bf16 = policies
    seen: list[torch.dtype] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):  # type: ignore[override]
            loss = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    seen.extend([p.dtype, p.grad.dtype, *(v.dtype for v in self.state[p].values() if v.ndim)])
            return loss

    monkeypatch.setattr("align_chains.strategies.sea_run.torch.optim.Adam", RecordingAdam)
    result = SEA(chains=2, iterations=3, revise=False).run(
        "Tell me about the sea.", bf16, classifiers[1], PARAMS
    )
    assert seen and set(seen) == {torch.float32}
    soft = [t["soft_reward"] for t in result.trace if t["iteration"] > 0]
    assert soft and all(math.isfinite(s) for s in soft)


# -- every strategy, every reward kind -----------------------------------------------------------------
def _all_kinds(policy: Policy, classifier: ClassifierReward, embedding: EmbeddingReward, *, text_only: bool):
    """One weighted reward made of every kind: a classifier, the policy as judge, MiniLM in bf16,
    and (when the strategy only needs scores of text) a Python function."""
    terms = [(classifier, 1.0), (JudgeReward(policy, principle="Be kind."), 0.5), (embedding, 0.5)]
    if text_only:
        terms.append((CallableReward(lambda p, r: len(r) / 100, name="length"), 0.1))
    return WeightedReward(terms)


STRATEGIES = [
    BestOfN(n=3),
    AdaptiveBestOfN(budget=3),
    RewardGuided(k=4),
    ValueGuided(principle="Be kind.", chunk_tokens=4, chunk_value="reward"),
    SEA(chains=2, iterations=3),
    Darwin(n=2, k=1, m=4, cycles=1, mutation_max_tokens=16),
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_every_strategy_runs_on_bf16_with_every_reward_kind(policies, classifiers, embedding_bf16, strategy):
    _, bf16 = policies
    reward = _all_kinds(bf16, classifiers[1], embedding_bf16, text_only=not isinstance(strategy, SEA))
    params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=0)
    results = strategy.run_batch(PROMPTS, bf16, reward, params)
    assert len(results) == 2
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.reward is not None and math.isfinite(result.reward)
        assert all(math.isfinite(lp) for c in result.candidates for lp in c.logprobs)
        if not isinstance(strategy, ValueGuided | RewardGuided):  # their values are not text scores
            rescored = reward.score([prompt], [result.text])[0]
            assert rescored == pytest.approx(result.reward, abs=RESCORED_ALONE)


def test_args_and_ivg_with_the_implicit_reward_on_bf16(policies):
    _, bf16 = policies
    implicit = ImplicitReward(bf16, principle="Be kind.")
    args = RewardGuided(k=4).run_batch(PROMPTS, bf16, implicit, PARAMS)
    assert args[0].details["scoring"] == "ImplicitBranchScorer"
    ivg = ValueGuided(principle="Be kind.", chunk_tokens=4).run_batch(PROMPTS, bf16, implicit, PARAMS)
    for result in [*args, *ivg]:
        assert result.reward is not None and math.isfinite(result.reward)


# -- LangChain and the server, loading bf16 from a directory ------------------------------------------
@pytest.fixture(scope="module")
def policy_dir(policies, tmp_path_factory):
    fp32, _ = policies
    path = tmp_path_factory.mktemp("tiny-policy-bf16")
    fp32.model.save_pretrained(path)
    fp32.tokenizer.save_pretrained(path)
    return path


def test_chat_model_with_dtype_bf16_loads_and_answers_in_bf16(policy_dir):
    model = BestOfNChatModel(
        policy=str(policy_dir),
        reward=lambda p, r: float(len(r)),
        dtype="bf16",
        device="cpu",
        n=2,
        max_tokens=6,
    )
    policy, _ = model.load()
    assert policy.model.dtype == BF16
    message = model.invoke("Hi")
    assert message.response_metadata["compute"]["generated_tokens"] > 0
    assert all(math.isfinite(c["reward"]) for c in message.response_metadata["candidates"])


def test_server_serves_a_bf16_policy(policy_dir):
    pytest.importorskip("align_chains_server")
    from align_chains_server.app import create_app
    from align_chains_server.cli import build_parser
    from align_chains_server.service import ServedModel
    from fastapi.testclient import TestClient

    args = build_parser().parse_args(["--policy", str(policy_dir), "--dtype", "bf16", "--device", "cpu"])
    assert args.dtype == "bf16"
    served = ServedModel(
        strategy="best-of-n",
        policy_spec=args.policy,
        reward_spec=lambda p, r: float(len(r)),
        defaults={"n": 2, "max_tokens": 6},
        device=args.device,
        dtype=args.dtype,
    )
    with TestClient(create_app(served)) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200, reply.text
    assert served.policy.model.dtype == BF16
    assert reply.json()["choices"][0]["message"]["content"] is not None


# -- the embedded policy ----------------------------------------------------------------------------
@pytest.mark.e2e
def test_embedded_policy_in_bf16_agrees_with_fp32():
    from align_chains.models.policy import load_policy

    fp32 = load_policy("smollm2", device="cpu", dtype="fp32")
    bf16 = load_policy("smollm2", device="cpu", dtype="bf16")
    assert bf16.model.dtype == BF16
    prompt = "Give me three tips for better sleep."
    result = BestOfN(n=2).run(
        prompt,
        bf16,
        CallableReward(lambda p, r: float(len(r))),
        SamplingParams(max_new_tokens=24, temperature=0.7, seed=0),
    )
    ids = bf16.render([{"role": "user", "content": prompt}])
    diffs = torch.cat(
        [
            (torch.tensor(c.logprobs) - _teacher_forced(fp32, ids, c.token_ids)).abs()
            for c in result.candidates
        ]
    )
    assert result.text.strip()
    assert diffs.mean() <= LOGPROB_VS_FP32_MEAN * 2 and diffs.max() <= 1.0
