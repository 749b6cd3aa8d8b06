"""Reference implementations, for tests and benchmarks only (not part of the ``align_chains`` package).

Each one does what a strategy does the slow way its authors' code does it, so a test can check
that the fast way gives the same answers and a benchmark can time the two side by side:

- ``darwin_reprefill``: ``DarwinReprefill``, DARWIN re-encoding every candidate's prompt and
  partial answer every ``m`` tokens (``tests/test_darwin.py``, ``benchmarks/bench_darwin.py``);
- ``naive_args``: ``NaiveClassifierScorer``, ARGS scoring every branch with a full reward forward
  (``tests/test_reward_guided.py``, ``benchmarks/bench_guided.py``).

They live beside the benchmarks, outside the installed package, so users never import them by
mistake. Benchmark scripts run as ``python benchmarks/<script>.py`` have this folder's parent on
``sys.path`` already and import ``reference.<module>``; ``tests/conftest.py`` puts it there for
the tests.
"""
