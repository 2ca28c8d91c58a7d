"""``adapterlab bench serve|train|qlora|table``: the benchmarks' commands, added to the CLI through
the ``adapterlab.commands`` entry point (pyproject.toml)."""

from __future__ import annotations


def register(sub, bench_sub) -> None:
    from .qlora import add_parser as add_qlora
    from .serve import add_parser as add_serve
    from .table import add_parser as add_table
    from .train import add_parser as add_train

    add_serve(bench_sub)
    add_train(bench_sub)
    add_qlora(bench_sub)
    add_table(bench_sub)


if __name__ == "__main__":  # `python3 -m benchmarks.cli bench train ...` where adapterlab is not installed (the GPU machine)
    import sys

    import benchmarks.cli  # the module object the entry point names, not this __main__ copy
    from adapters.cli import main

    sys.exit(main(sys.argv[1:], registrars=[benchmarks.cli.register]))
