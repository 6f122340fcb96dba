"""``python -m experiments.llamacpp_server ARGS``: llama-cpp-python's OpenAI-compatible server, safe on AMX CPUs.

The same command line as ``python -m llama_cpp.server``; the only difference
is that models load under :func:`experiments.backends.llamacpp_amx.no_amx_repacking`,
so a llama-cpp-python built with AMX kernels does not crash at the first
request (see that module). Tests, benchmarks and the README start the server
through this module.
"""

from __future__ import annotations


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    from experiments.backends.llamacpp_amx import no_amx_repacking

    # The server loads its model(s) inside main(), before it starts answering.
    with no_amx_repacking():
        serve()


if __name__ == "__main__":
    main()
