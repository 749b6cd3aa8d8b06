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
from align_chains.evaluation.fluency import GATE, measure, verdict
from align_chains.evaluation.prompts import STARTER_PROMPTS, EvalPrompt, load_prompts
from align_chains.evaluation.rewards import load_eval_reward
from align_chains.evaluation.specs import StrategySetting, parse_specs, plain_sample
from align_chains.evaluation.stats import summarise
from align_chains.models.embedded import EMBEDDED_POLICY
from align_chains.models.policy import Policy, load_policy
from align_chains.rewards import RewardModel
from align_chains.rewards.specs import parse_reward_spec
from align_chains.tasks import LineReward, RoutedReward, conversation_key

FORMAT_VERSION = 2  # 2: per-prompt rewards, success and the fluency gate
# settings that must match for a results file to be resumed
_RESUME_KEYS = ("policy", "reward", "holdout", "max_tokens", "temperature", "seed", "fluency_gate")


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

    def reference_nll(self, prompt_id: str) -> float | None:
        """The plain sample's NLL per token for a prompt: the fluency gate's reference."""
        plain = plain_sample().key
        cell = next((c for c in self.cells if c["key"] == plain and c["prompt"] == prompt_id), None)
        return None if cell is None else cell["fluency"]["nll"]

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


def per_prompt_compute(compute: dict[str, Any], input_tokens: int, uniform: bool = True) -> dict[str, float]:
    """One prompt's share of a batched run's work.

    Forward passes, reward calls and seconds are shared by the ``batch_size`` prompts of a run,
    so each prompt is charged an equal share. Generated tokens and reward items are the
    prompt's own, except from a strategy whose counters describe the whole batch (its
    ``prompt_tokens`` is then not this prompt's length, and every prompt of the batch got the
    same counters, ``uniform``): those are shared too. DARWIN counts each prompt's own tokens
    but also its mutation prompts in ``prompt_tokens``; its counters differ between prompts.
    """
    size = max(1, int(compute.get("batch_size", 1)))
    own_length = int(compute.get("prompt_tokens", input_tokens)) == input_tokens
    whole_batch = size > 1 and uniform and not own_length
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
        raise InvalidInputError(
            f"{str(path)!r} is not an align-chains eval results file of version {FORMAT_VERSION} (older "
            "files have no fluency gate): pass another --json path to start afresh."
        )
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
    settings = _settings(strategies, max_tokens)
    routes = line_routes(loaded)  # two lines asking the same with different rewards fail here
    global_reward = None if routes and all(p.reward is not None for p in loaded) else reward
    for spec in (s for s in (global_reward, holdout) if s is not None):
        parse_reward_spec(spec)  # a bad spec fails here, before any model loads
    config = {
        "policy": policy if isinstance(policy, str) else policy.name,
        "reward": _reward_label(reward, bool(routes), global_reward is None),
        "holdout": holdout if isinstance(holdout, str) else repr(holdout),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
        "strategies": [s.key for s in settings],
        "kept": CAPS,  # what each cell keeps of candidates and traces (evaluation/cell_details.py)
        "fluency_gate": GATE,  # success = constraint met AND fluent (evaluation/fluency.py)
    }
    report = EvalReport(config=config, prompts=loaded, settings=settings)
    if json_path is not None and Path(json_path).exists():
        report.cells, report.errors = _resume(Path(json_path), config, loaded)

    todo = [(s, ps) for s in settings if (ps := [p for p in loaded if not report.done(s.key, p.id)])]
    if todo:
        job = EvalJob(
            policy, global_reward, routes, holdout, max_tokens, temperature, seed, batch_size, device
        )
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


def _settings(strategies: Sequence[str | StrategySetting], max_tokens: int) -> list[StrategySetting]:
    """The plain sample, then every setting of every spec (specs are parsed and checked here)."""
    parsed = [s for s in strategies if isinstance(s, StrategySetting)]
    specs = [s for s in strategies if isinstance(s, str)]
    parsed += parse_specs(specs, max_tokens=max_tokens) if specs else []
    return [plain_sample(), *(s for s in parsed if s.key != plain_sample().key)]


def _reward_label(reward: Any, routed: bool, all_routed: bool) -> str:
    """How the config names the optimised reward ("per-prompt" when lines carry their own)."""
    shown = reward if isinstance(reward, str) else repr(reward)
    if not routed:
        return shown
    return "per-prompt" if all_routed else f"per-prompt, else {shown}"


def line_routes(prompts: Sequence[EvalPrompt]) -> dict[str, LineReward]:
    """Each prompt's own reward by its messages; the same messages with two rewards is an error."""
    routes: dict[str, LineReward] = {}
    owner: dict[str, str] = {}
    for p in prompts:
        if p.reward is None:
            continue
        key = conversation_key(p.messages)
        if key in routes and routes[key] != p.reward:
            raise InvalidInputError(
                f"Prompts {owner[key]!r} and {p.id!r} have the same messages but different rewards; "
                "a strategy sees only the messages, so make the prompts differ (or merge the lines)."
            )
        routes[key], owner[key] = p.reward, p.id
    return routes


@dataclass(frozen=True)
class EvalJob:
    """What every cell of one evaluation shares; a worker process loads its models from it."""

    policy: str | Policy
    reward: Any  # the global reward spec (None: every line carries its own)
    routes: dict[str, LineReward]  # each line's own reward, by its messages
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
        base = None if self.reward is None else load_eval_reward(self.reward, policy, self.device)
        reward = RoutedReward(self.routes, base) if self.routes else base
        if reward is None:
            raise InvalidInputError("No reward: pass one, or give every prompt line its own.")
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
        regate(report)
        if json_path is not None:
            report.save(json_path)


def regate(report: EvalReport) -> None:
    """Each cell's fluency verdict against its prompt's plain-sample NLL, now that the report has
    it (a worker may finish a cell before the plain sample of its prompt is back)."""
    plain = plain_sample().key
    for cell in report.cells:
        if cell["key"] == plain or "fluency" not in cell:
            continue
        gate = verdict(cell["fluency"], report.reference_nll(cell["prompt"]))
        cell["fluency"], cell["fluent"] = gate, gate["fluent"]
        met = cell["constraint_met"]
        cell["success"] = None if met is None else bool(met and gate["fluent"])


def _run(
    report: EvalReport,
    todo: list[tuple[StrategySetting, list[EvalPrompt]]],
    job: EvalJob,
    json_path: str | Path | None,
    show_progress: bool,
) -> None:
    from tqdm.auto import tqdm

    common, reward, holdout = job.load()
    bar = tqdm(total=sum(len(ps) for _, ps in todo), disable=not show_progress, unit="answer")
    try:
        for setting, pending in todo:
            bar.set_description(setting.key)
            model = setting.build(**common)
            for start in range(0, len(pending), job.batch_size):
                chunk = pending[start : start + job.batch_size]
                try:
                    cells = run_cells(setting, model, chunk, reward, holdout, report.reference_nll)
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
    reference: Callable[[str], float | None] = lambda prompt_id: None,
) -> list[dict[str, Any]]:
    """One strategy run over ``chunk`` (what ``model.batch`` runs), scored by both rewards, the
    task's success test and the fluency gate (``reference``: a prompt's plain-sample NLL, when
    known): the chunk's cells. Raises the strategy's AlignChainsError (the caller records it)."""
    results = model.run_strategy([p.messages for p in chunk])
    messages = [build_message(result, model.model_name) for result in results]
    policy = model.load()[0]
    return _cells(setting, chunk, messages, results, (reward, holdout), policy, reference)


def chunk_error(setting: StrategySetting, chunk: list[EvalPrompt], exc: Exception) -> dict[str, Any]:
    """The ``errors`` entry of a chunk whose strategy run failed."""
    return {"key": setting.key, "prompts": [p.id for p in chunk], "error": f"{type(exc).__name__}: {exc}"}


def _cells(
    setting: StrategySetting,
    chunk: list[EvalPrompt],
    messages: list[Any],
    results: list[Any],
    rewards: tuple[RewardModel, RewardModel],
    policy: Policy,
    reference: Callable[[str], float | None],
) -> list[dict[str, Any]]:
    """One batch's cells: rewards, the task's success test, the fluency gate, compute, details."""
    reward, holdout = rewards
    texts = [m.text for m in messages]
    conversations = [p.messages for p in chunk]
    scores = reward.score(conversations, texts)
    held = holdout.score(conversations, texts)
    met = reward.success(conversations, texts) if isinstance(reward, RoutedReward) else [None] * len(texts)
    gates = [
        verdict(m, m["nll"] if setting.key == plain_sample().key else reference(p.id))
        for p, m in zip(chunk, measure(policy, conversations, texts), strict=True)
    ]
    computes = [m.response_metadata["compute"] for m in messages]
    uniform = all(c == computes[0] for c in computes)
    cells = []
    for prompt, message, result, r, h, ok, gate in zip(
        chunk, messages, results, scores, held, met, gates, strict=True
    ):
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
                "task_reward": r if prompt.reward is not None else None,
                "constraint_met": ok,
                "fluent": gate["fluent"],
                "success": None if ok is None else bool(ok and gate["fluent"]),
                "fluency": gate,
                "strategy_reward": meta.get("reward"),
                "compute": compute,
                "per_prompt": per_prompt_compute(compute, rendered_prompt_tokens(message), uniform),
                **cell_details(result),  # candidates and trace, capped
            }
        )
    return cells
