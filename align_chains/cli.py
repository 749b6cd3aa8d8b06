"""The ``align-chains`` command line.

align-chains chat "Give me three tips for better sleep." --strategy best-of-n --n 8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from align_chains.cli_options import parse_option
from align_chains.errors import AlignChainsError, InvalidInputError
from align_chains.models.embedded import EMBEDDED_POLICY, EMBEDDED_REWARD
from align_chains.strategies import STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align-chains", description="Inference-time alignment of local language models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="Answer one prompt with an alignment strategy.")
    chat.add_argument("prompt", help="The user message.")
    chat.add_argument("--strategy", default="best-of-n", help=f"One of: {', '.join(sorted(STRATEGIES))}.")
    chat.add_argument(
        "--n", type=int, help="Best-of-N: candidates (default 4); darwin: mutations per cycle (default 5)."
    )
    chat.add_argument("--policy", default=EMBEDDED_POLICY, help="Model id, directory or embedded name.")
    chat.add_argument(
        "--reward",
        help=f"Reward: 'minilm', 'judge' (the policy as judge), 'judge:<model>', 'python:module:function', "
        f"'rule:distinct', a model id or directory (default: the strategy's; {EMBEDDED_REWARD!r} for "
        "best-of-n, 'judge' for sea).",
    )
    chat.add_argument(
        "--principle",
        help="A principle answers should follow: value-guided decoding guides the policy with it; "
        "other strategies add it to the embedding or judge reward.",
    )
    chat.add_argument("--system", help="A system message to prepend.")
    chat.add_argument("--max-tokens", type=int, help="Maximum new tokens (default: the strategy's).")
    chat.add_argument("--temperature", type=float, help="Sampling temperature (default: the strategy's).")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--top-k", type=int, help="0 disables (default: the strategy's; darwin uses 40).")
    chat.add_argument("--seed", type=int)
    chat.add_argument("--device", help="cpu, cuda, ... (automatic by default).")
    chat.add_argument(
        "--llama-cpp", action="store_true",
        help="Decode with llama.cpp on a GGUF (--policy: a .gguf file or the embedded name); "
        "best-of-n (and -o allocation=adaptive) only; needs the llama extra.",
    )  # fmt: skip
    chat.add_argument(
        "--option", "-o", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
        help="Any other strategy setting, e.g. -o n=8 (repeatable).",
    )  # fmt: skip
    chat.add_argument("--json", action="store_true", help="Print the full result as JSON.")
    chat.add_argument("--quiet", action="store_true", help="No progress output.")
    estimate = commands.add_parser(
        "estimate",
        help="Estimate a request's peak memory before running it (reads configs, loads no weights).",
    )
    estimate.add_argument("--strategy", default="best-of-n", help=f"One of: {', '.join(sorted(STRATEGIES))}.")
    estimate.add_argument("--policy", default=EMBEDDED_POLICY, help="Model id, directory or embedded name.")
    estimate.add_argument(
        "--reward",
        help="Any reward spec ('minilm', 'judge', 'judge:<model>', a classifier directory, ...) or none "
        "(default); 'python:' and 'rule:' rewards hold no weights.",
    )
    estimate.add_argument(
        "--prompt-tokens", type=int, nargs="+", default=[256], help="One length per prompt."
    )
    estimate.add_argument("--max-tokens", type=int, default=128)
    estimate.add_argument("--top-p", type=float, default=1.0)
    estimate.add_argument("--top-k", type=int, default=0)
    estimate.add_argument("--dtype", help="bf16, fp32, ... (default: what a load here would pick).")
    estimate.add_argument(
        "--option", "-o", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
        help="A strategy setting, e.g. -o n=16 (repeatable).",
    )  # fmt: skip
    estimate.add_argument("--json", action="store_true", help="Print the estimate as JSON.")
    _add_eval_parser(commands)
    _add_view_parser(commands)
    for name, what in SERVER_COMMANDS.items():  # their options belong to the server package
        server = commands.add_parser(
            name, add_help=False, help=f"{what} (needs align-chains-server; 'align-chains {name} --help')."
        )
        server.add_argument("serve_args", nargs=argparse.REMAINDER)
    return parser


def _add_eval_parser(commands: Any) -> None:
    ev = commands.add_parser(
        "eval",
        help="Reward per compute: run strategies on a JSONL prompt file (see docs/evaluation.md).",
    )
    ev.add_argument("--prompts", help='JSONL file, one {"prompt": ...} a line (default: the starter set).')
    ev.add_argument(
        "--strategies", nargs="+", default=["best-of-n:n=1,2,4,8", "early-rejection:n=8:rejection=0.5"],
        help="Specs NAME[:KEY=V1,V2...], e.g. best-of-n:n=4,8,16,32 sea darwin:cycles=1 reward-guided:k=4.",
    )  # fmt: skip
    ev.add_argument(
        "--reward", default="judge",
        help="The reward strategies optimise (default: judge); lines with their own \"reward\" use theirs.",
    )  # fmt: skip
    ev.add_argument(
        "--holdout-reward", default="minilm",
        help="A held-out reward: 'minilm', 'judge-principle:<sentence>', 'rule:distinct', "
        "'lexicon:w1,w2', 'python:module:function', or a classifier directory.",
    )  # fmt: skip
    ev.add_argument("--policy", default=EMBEDDED_POLICY)
    ev.add_argument("--max-tokens", type=int, default=48)
    ev.add_argument("--temperature", type=float, help="Default: each strategy's own.")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=4, help="Prompts per strategy run.")
    ev.add_argument("--limit", type=int, help="Only the first LIMIT prompts.")
    ev.add_argument("--json", default="eval.json", help="Results file; an existing one is resumed.")
    ev.add_argument("--plot", help="Also draw the curves to this PNG (needs matplotlib).")
    ev.add_argument("--html", help="Also write the report page (one self-contained HTML file) to this path.")
    ev.add_argument("--device")
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument(
        "--ray",
        action="store_true",
        help="Run the cells on Ray Data workers (needs integrations/ray); same results file, resumable.",
    )
    ev.add_argument(
        "--ray-actors", type=int, default=1, help="With --ray: workers, each with its own models."
    )
    ev.add_argument("--ray-address", help="With --ray: a running cluster (default: start a local one).")


def _add_view_parser(commands: Any) -> None:
    view = commands.add_parser(
        "view",
        help="Write the report page of an eval results file (or compare two) and open it in a browser.",
    )
    view.add_argument(
        "results", nargs="+", metavar="eval.json", help="One results file, or two to compare (A B)."
    )
    view.add_argument(
        "-o", "--output", help="The HTML file to write (default: next to the first file, e.g. eval.html)."
    )
    view.add_argument("--title", help="The page title (default: from the file names).")
    view.add_argument("--no-open", action="store_true", help="Write the page without opening a browser.")


def _view(args: argparse.Namespace) -> int:
    """Write the report page of one or two results files and open it unless --no-open."""
    import webbrowser
    from pathlib import Path

    from align_chains.evaluation.report import write_report

    if len(args.results) > 2:
        raise InvalidInputError(
            f"align-chains view takes one results file, or two to compare; got {len(args.results)}."
        )
    first = Path(args.results[0])
    default = (
        first.with_suffix(".html")
        if len(args.results) == 1
        else (first.with_name(f"{first.stem}_vs_{Path(args.results[1]).stem}.html"))
    )
    path = write_report(args.results, args.output or default, title=args.title)
    print(f"report: {path}")
    if not args.no_open:
        webbrowser.open(path.resolve().as_uri())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from align_chains.evaluation import STARTER_PROMPTS, evaluate

    report = evaluate(
        args.strategies,
        args.prompts or STARTER_PROMPTS,
        policy=args.policy,
        reward=args.reward,
        holdout=args.holdout_reward,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        json_path=args.json,
        plot_path=args.plot,
        device=args.device,
        show_progress=not args.quiet,
        runner=_eval_runner(args) if args.ray else None,
    )
    print(report.table())
    for error in report.errors:
        print(f"failed: {error['key']} on {error['prompts']}: {error['error']}", file=sys.stderr)
    if args.html:
        from align_chains.evaluation.report import write_report

        write_report([args.json], args.html)
    extras = (f", plot: {args.plot}" if args.plot else "") + (f", report: {args.html}" if args.html else "")
    print(f"\nresults: {args.json}{extras}")
    return 0


EVAL_RUNNERS_GROUP = "align_chains.eval_runners"
"""Entry-point group through which an installed package runs eval cells elsewhere (``--ray``)."""


def _eval_runner(args: argparse.Namespace) -> Any:
    """``eval --ray``'s runner, from the Ray integration's ``align_chains.eval_runners`` entry point
    (the core never imports an integration)."""
    found = entry_points(group=EVAL_RUNNERS_GROUP, name="ray")
    if not found:
        raise InvalidInputError(
            "align-chains eval --ray needs the Ray integration: from a checkout run "
            "python -m pip install -e integrations/ray (or pip install align-chains-ray)."
        )
    return next(iter(found)).load()(actors=args.ray_actors, address=args.ray_address)


COMMANDS_GROUP = "align_chains.commands"
"""Entry-point group through which installed packages add subcommands (the server adds ``serve``)."""

SERVER_INSTALL_HINT = (
    "'align-chains serve' and 'serve-reward' need the server package: from a checkout run "
    "python -m pip install -e integrations/server (or pip install align-chains-server)."
)


SERVER_COMMANDS = {
    "serve": "Serve a strategy over the OpenAI chat-completions API",
    "serve-reward": "Serve a reward model over vLLM's /score and TEI's /rerank APIs",
}
"""Subcommands whose options belong to the server package, with their help lines."""


def _serve(argv: list[str], name: str = "serve") -> int:
    """Hand the arguments to the ``name`` command an installed package registers (align-chains-server).

    The core never imports an integration: the command is found through the ``align_chains.commands``
    entry point and loaded only now.
    """
    found = entry_points(group=COMMANDS_GROUP, name=name)
    if not found:
        print(
            f"align-chains: error: {SERVER_INSTALL_HINT} (no {COMMANDS_GROUP!r} entry point {name!r})",
            file=sys.stderr,
        )
        return 2
    try:
        serve_main = next(iter(found)).load()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("align_chains_server", "fastapi", "uvicorn", "starlette"):
            raise
        print(f"align-chains: error: {SERVER_INSTALL_HINT} ({exc})", file=sys.stderr)
        return 2
    return serve_main(argv)


def _llama_cpp_policy(args: argparse.Namespace, model: Any, err: Any) -> Any:
    """The llama.cpp policy of ``chat --llama-cpp``, after checking the strategy can use one."""
    from align_chains.models.llama_cpp import load_llama_cpp_policy

    strategy = type(model.build_strategy())
    if not strategy.runs_on_llama_cpp:
        raise InvalidInputError(
            f"--llama-cpp serves only best-of-n (and -o allocation=adaptive); {strategy.name!r} needs "
            "the transformers engine: drop --llama-cpp."
        )
    with err.status(f"Loading {args.policy} in llama.cpp…"):
        return load_llama_cpp_policy(args.policy)


def _chat(args: argparse.Namespace) -> int:
    from langchain_core.messages import HumanMessage, SystemMessage
    from rich.console import Console

    from align_chains.chat_models import chat_model_class
    from align_chains.models.policy import load_policy
    from align_chains.rewards import load_reward

    err = Console(stderr=True, quiet=args.quiet)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own status line covers loading
    settings: dict[str, Any] = dict(args.option)
    if args.n is not None:
        settings["n"] = args.n
    cls = chat_model_class(args.strategy)
    guided_by_principle = args.principle is not None and "principle" in cls.strategy_field_names()
    if guided_by_principle:
        settings["principle"] = args.principle
    unknown = sorted(set(settings) - set(cls.strategy_field_names()))
    if unknown:
        raise InvalidInputError(
            f"Unknown strategy option(s) {unknown} for {args.strategy!r}; "
            f"it takes {cls.strategy_field_names()}."
        )
    for name in ("reward", "max_tokens", "temperature", "top_k"):  # unset: the chat model's default
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    # construct first: settings are validated before any model loads
    model = cls(
        policy=args.policy,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
        show_progress=not args.quiet,
        **settings,
    )
    if args.llama_cpp:
        model.policy = _llama_cpp_policy(args, model, err)
    if args.principle and not guided_by_principle:
        with err.status("Loading the policy and the reward model…"):
            policy = model.policy if args.llama_cpp else load_policy(args.policy, device=args.device)
            model.policy = policy
            model.reward = load_reward(
                model.reward, device=args.device, principle=args.principle, policy=policy
            )
    with err.status(f"Loading {args.policy} and the reward (the first run converts the policy, ~30 s)…"):
        model.load()
    messages = ([SystemMessage(args.system)] if args.system else []) + [HumanMessage(args.prompt)]
    message = model.invoke(messages)
    meta = message.response_metadata
    if args.json:
        print(json.dumps({"content": message.content, "usage": message.usage_metadata, **meta}, indent=2))
        return 0
    compute = meta["compute"]
    print(message.content)
    print()
    reward_text = "n/a" if meta["reward"] is None else f"{meta['reward']:.4f}"
    print(
        f"reward: {reward_text}  ({meta['strategy']}, {len(meta['candidates'])} candidates, "
        f"finish: {meta['finish_reason']})"
    )
    print(
        f"compute: {compute['prompt_tokens']} prompt tokens prefilled, {compute['generated_tokens']} "
        f"tokens generated, {compute['forward_passes']} forward passes, {compute['reward_calls']} "
        f"reward call(s) over {compute['reward_items']} responses, {compute['seconds']:.2f} s"
    )
    if meta.get("budget_exhausted"):
        print(f"budget exhausted: {meta['budget_exhausted']} (the best answer found so far is shown)")
    return 0


def _estimate(args: argparse.Namespace) -> int:
    """Print ``align_chains.memory.estimate_memory`` for these settings (no weights are loaded)."""
    from align_chains.engine.sampling import SamplingParams
    from align_chains.memory import estimate_memory, footprint_from_spec, policy_shape
    from align_chains.strategies import get_strategy

    strategy = get_strategy(args.strategy)(**dict(args.option))
    params = SamplingParams(max_new_tokens=args.max_tokens, top_p=args.top_p, top_k=args.top_k)
    shape = policy_shape(args.policy, args.dtype)
    reward = footprint_from_spec(args.reward, shape)
    result = estimate_memory(strategy, shape, reward, params, list(args.prompt_tokens))
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.explain())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SERVER_COMMANDS:  # their options belong to the server package
        return _serve(argv[1:], argv[0])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "chat":
            return _chat(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "view":
            return _view(args)
    except AlignChainsError as exc:
        print(f"align-chains: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for problem in exc.errors():
            name = ".".join(str(p) for p in problem["loc"])
            print(
                f"align-chains: error: invalid {name}={problem.get('input')!r}: {problem['msg']}",
                file=sys.stderr,
            )
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
