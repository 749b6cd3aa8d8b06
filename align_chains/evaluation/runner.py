"""The evaluation run: every strategy setting on every prompt, through the public chat models.

Order of work, so that mistakes cost nothing: read and check the prompt file, parse and check
every strategy spec (constructing its chat model loads nothing), check the reward specs and an
existing results file; only then load the policy and the rewards, once, shared by every chat
model. Each setting runs its prompts in batches (``model.batch``: one strategy run per batch);
after every batch the answers are re-scored by the optimised and the held-out reward and the
JSON file is rewritten, so a cut-off run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align_chains.chat_models.results import build_message
from align_chains.errors import AlignChainsError, InvalidInputError
from align_chains.evaluation.cell_details import CAPS, cell_details
from align_chains.evaluation.prompts import STARTER_PROMPTS, EvalPrompt, load_prompts
from align_chains.evaluation.rewards import load_eval_reward
from align_chains.evaluation.specs import StrategySetting, parse_specs, plain_sample
from align_chains.evaluation.stats import summarise
from align_chains.models.embedded import EMBEDDED_POLICY
from align_chains.models.policy import Policy, load_policy
from align_chains.rewards import RewardModel
from align_chains.rewards.specs import parse_reward_spec

FORMAT_VERSION = 1
# settings that must match for a results file to be resumed
_RESUME_KEYS = ("policy", "reward", "holdout", "max_tokens", "temperature", "seed")


@dataclass
class EvalReport:
    """What ``evaluate`` returns and writes: settings, per-(setting, prompt) cells, summary rows."""

    config: dict[str, Any]
    prompts: list[EvalPrompt]
    settings: list[StrategySetting]
    cells: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def done(self, key: str, prompt_id: str) -> bool:
        return any(c["key"] == key and c["prompt"] == prompt_id for c in self.cells)

    def summary(self) -> list[dict[str, Any]]:
        """One row per setting that has results: rewards, win rates vs the plain sample, compute."""
        ids = {p.id for p in self.prompts}  # a --limit run summarises its own prompts only
        current = [c for c in self.cells if c["prompt"] in ids]
        baseline = {c["prompt"]: c for c in current if c["key"] == plain_sample().key}
        rows = []
        for setting in self.settings:
            cells = [c for c in current if c["key"] == setting.key]
            if cells:
                rows.append(
                    {
                        "key": setting.key,
                        "strategy": setting.strategy,
                        "settings": setting.settings,
                        **summarise(cells, baseline),
                    }
                )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "config": self.config,
            "prompts": [p.as_dict() for p in self.prompts],
            "summary": self.summary(),
            "errors": self.errors,
            "cells": self.cells,
        }

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically (a crash never leaves half a file to resume from)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def table(self) -> str:
        """A markdown table of the summary (what the CLI prints)."""
        lines = [
            "| strategy | setting | reward [95% CI] | held-out [95% CI] | win vs plain | gen tokens | "
            "fwd passes | reward calls | seconds |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def fmt(stat: dict[str, Any]) -> str:
            if stat["mean"] is None:
                return "n/a"
            return f"{stat['mean']:.3f} [{stat['ci'][0]:.3f}, {stat['ci'][1]:.3f}]"

        for row in self.summary():
            c = row["compute"]
            label = ",".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
            win = "n/a" if row["win_rate"]["mean"] is None else f"{row['win_rate']['mean']:.2f}"
            lines.append(
                f"| {row['strategy']} | {label} | {fmt(row['reward'])} | {fmt(row['holdout'])} | {win} | "
                f"{c['generated_tokens']:.0f} | {c['forward_passes']:.1f} | {c['reward_calls']:.1f} | "
                f"{c['seconds']:.2f} |"
            )
        return "\n".join(lines)


def rendered_prompt_tokens(message: Any) -> int:
    """The rendered prompt's length: the usage's input tokens less the extra prefill they include."""
    usage = message.usage_metadata or {}
    extra = (usage.get("input_token_details") or {}).get("extra_prefill", 0)
    return int(usage.get("input_tokens", 0)) - int(extra)


def per_prompt_compute(compute: dict[str, Any], input_tokens: int) -> dict[str, float]:
    """One prompt's share of a batched run's work.

    Forward passes, reward calls and seconds are shared by the ``batch_size`` prompts of a run,
    so each prompt is charged an equal share. Generated tokens and reward items are the
    prompt's own, except from a strategy whose counters describe the whole batch (its
    ``prompt_tokens`` is then not this prompt's length): those are shared too.
    """
    size = max(1, int(compute.get("batch_size", 1)))
    whole_batch = size > 1 and int(compute.get("prompt_tokens", input_tokens)) != input_tokens
    own = size if whole_batch else 1
    return {
        "generated_tokens": compute["generated_tokens"] / own,
        "reward_items": compute["reward_items"] / own,
        "forward_passes": compute["forward_passes"] / size,
        "reward_calls": compute["reward_calls"] / size,
        "seconds": compute["seconds"] / size,
    }


def _resume(path: Path, config: dict[str, Any], prompts: list[EvalPrompt]) -> tuple[list, list]:
    """Cells of an earlier run of the same evaluation (raises if it was a different one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"Cannot resume from {str(path)!r}: {exc}. Delete it or pass another --json path."
        ) from None
    if data.get("version") != FORMAT_VERSION:
        raise InvalidInputError(f"{str(path)!r} is not an align-chains eval results file (version 1).")
    changed = [k for k in _RESUME_KEYS if data["config"].get(k) != config.get(k)]
    messages = {p["id"]: p["messages"] for p in data.get("prompts", [])}
    changed += [f"prompt {p.id!r}" for p in prompts if p.id in messages and messages[p.id] != p.messages]
    if changed:
        raise InvalidInputError(
            f"{str(path)!r} holds results of a different evaluation ({', '.join(changed)} differ); "
            "delete it or pass another --json path to start afresh."
        )
    return list(data.get("cells", [])), []


def evaluate(
    strategies: Sequence[str | StrategySetting],
    prompts: str | Path | Sequence[EvalPrompt] = STARTER_PROMPTS,
    *,
    policy: str | Policy = EMBEDDED_POLICY,
    reward: Any = "judge",
    holdout: Any = "minilm",
    max_tokens: int = 48,
    temperature: float | None = None,
    seed: int = 0,
    batch_size: int = 4,
    limit: int | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    runner: CellRunner | None = None,
) -> EvalReport:
    """Run every strategy setting on every prompt and summarise reward per compute.

    ``strategies`` are specs like ``"best-of-n:n=4,8,16"`` (see ``evaluation.specs``);
    ``reward`` is what the strategies optimise, ``holdout`` a second reward they never see (see
    ``evaluation.rewards``). Every answer is also compared with the policy's plain sample (one
    sample, always run first). With ``json_path`` the results are saved after every batch and an
    existing file of the same evaluation is resumed. ``temperature=None`` keeps each
    strategy's own default. ``runner`` runs the cells elsewhere (``align-chains eval --ray``:
    Ray Data workers): given the settings' pending prompts and the ``EvalJob``, it yields each
    chunk's ``ChunkOutcome`` (built by ``run_cells``, so the file is the same as a local run's).
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
    loaded = load_prompts(prompts) if isinstance(prompts, str | Path) else list(prompts)
    if not loaded:
        raise InvalidInputError("No prompts to evaluate.")
    loaded = loaded[:limit] if limit else loaded
    parsed = [s for s in strategies if isinstance(s, StrategySetting)]
    parsed += (
        parse_specs([s for s in strategies if isinstance(s, str)], max_tokens=max_tokens)
        if any(isinstance(s, str) for s in strategies)
        else []
    )
    settings = [plain_sample(), *(s for s in parsed if s.key != plain_sample().key)]
    for spec in (reward, holdout):
        parse_reward_spec(spec)  # a bad spec fails here, before any model loads
    config = {
        "policy": policy if isinstance(policy, str) else policy.name,
        "reward": reward if isinstance(reward, str) else repr(reward),
        "holdout": holdout if isinstance(holdout, str) else repr(holdout),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
        "strategies": [s.key for s in settings],
        "kept": CAPS,  # what each cell keeps of candidates and traces (evaluation/cell_details.py)
    }
    report = EvalReport(config=config, prompts=loaded, settings=settings)
    if json_path is not None and Path(json_path).exists():
        report.cells, report.errors = _resume(Path(json_path), config, loaded)

    todo = [(s, [p for p in loaded if not report.done(s.key, p.id)]) for s in settings]
    todo = [(s, ps) for s, ps in todo if ps]
    if todo:
        job = EvalJob(policy, reward, holdout, max_tokens, temperature, seed, batch_size, device)
        if runner is None:
            _run(report, todo, job, json_path, show_progress)
        else:  # e.g. align_chains_ray.evaluation.run_on_ray: the cells come back here, saved as they come
            _collect(report, runner(todo, job), json_path)
    if json_path is not None:
        report.save(json_path)
    if plot_path is not None:
        from align_chains.evaluation.plot import plot_curves

        plot_curves(report.summary(), plot_path)
    return report


@dataclass(frozen=True)
class EvalJob:
    """What every cell of one evaluation shares; a worker process loads its models from it."""

    policy: str | Policy
    reward: Any
    holdout: Any
    max_tokens: int
    temperature: float | None
    seed: int
    batch_size: int
    device: str | None

    def load(self) -> tuple[dict[str, Any], RewardModel, RewardModel]:
        """The policy and both rewards, loaded once: (the chat models' common settings, the
        optimised reward, the held-out reward)."""
        policy = load_policy(self.policy, device=self.device)
        reward = load_eval_reward(self.reward, policy, self.device)
        holdout = load_eval_reward(self.holdout, policy, self.device)
        common: dict[str, Any] = {"policy": policy, "reward": reward, "max_tokens": self.max_tokens}
        common["seed"] = self.seed
        if self.temperature is not None:
            common["temperature"] = self.temperature
        return common, reward, holdout


@dataclass(frozen=True)
class ChunkOutcome:
    """One chunk's cells, or the ``errors`` entry of its failed run; ``size`` prompts."""

    cells: list[dict[str, Any]]
    error: dict[str, Any] | None
    size: int


CellRunner = Callable[[list[tuple[StrategySetting, list[EvalPrompt]]], EvalJob], Iterable[ChunkOutcome]]


def _collect(report: EvalReport, outcomes: Iterable[ChunkOutcome], json_path: str | Path | None) -> None:
    """Add each chunk's cells (or error) as it arrives, saving after each (so a run resumes)."""
    for outcome in outcomes:
        report.cells.extend(outcome.cells)
        if outcome.error is not None:
            report.errors.append(outcome.error)
        if json_path is not None:
            report.save(json_path)


def _run(
    report: EvalReport,
    todo: list[tuple[StrategySetting, list[EvalPrompt]]],
    job: EvalJob,
    json_path: str | Path | None,
    show_progress: bool,
) -> None:
    from tqdm.auto import tqdm

    common, reward, holdout = job.load()
    batch_size = job.batch_size
    bar = tqdm(total=sum(len(ps) for _, ps in todo), disable=not show_progress, unit="answer")
    try:
        for setting, pending in todo:
            bar.set_description(setting.key)
            model = setting.build(**common)
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                try:
                    cells = run_cells(setting, model, chunk, reward, holdout)
                except AlignChainsError as exc:  # one setting failing does not stop the others
                    report.errors.append(chunk_error(setting, chunk, exc))
                    bar.update(len(chunk))
                    continue
                report.cells.extend(cells)
                bar.update(len(chunk))
                if json_path is not None:
                    report.save(json_path)
    finally:
        bar.close()


def run_cells(
    setting: StrategySetting,
    model: Any,
    chunk: list[EvalPrompt],
    reward: RewardModel,
    holdout: RewardModel,
) -> list[dict[str, Any]]:
    """One strategy run over ``chunk`` (what ``model.batch`` runs), scored by both rewards: the
    chunk's cells. Raises the strategy's AlignChainsError (the caller records it)."""
    results = model.run_strategy([p.messages for p in chunk])
    messages = [build_message(result, model.model_name) for result in results]
    texts = [m.text for m in messages]
    conversations = [p.messages for p in chunk]
    rewards = reward.score(conversations, texts)
    held = holdout.score(conversations, texts)
    cells = []
    for prompt, message, result, r, h in zip(chunk, messages, results, rewards, held, strict=True):
        meta = message.response_metadata
        compute = meta["compute"]
        cells.append(
            {
                "key": setting.key,
                "strategy": setting.strategy,
                "settings": setting.settings,
                "prompt": prompt.id,
                "text": message.text,
                "reward": r,
                "holdout": h,
                "strategy_reward": meta.get("reward"),
                "compute": compute,
                "per_prompt": per_prompt_compute(compute, rendered_prompt_tokens(message)),
                **cell_details(result),  # candidates and trace, capped
            }
        )
    return cells


def chunk_error(setting: StrategySetting, chunk: list[EvalPrompt], exc: Exception) -> dict[str, Any]:
    """The ``errors`` entry of a chunk whose strategy run failed."""
    return {"key": setting.key, "prompts": [p.id for p in chunk], "error": f"{type(exc).__name__}: {exc}"}
