"""``scripts/serve ENGINE [options] [-- engine arguments]``: an OpenAI-compatible server on loopback.

ENGINE is ``vllm`` (vLLM CPU), ``llama-server`` (llama.cpp's own server) or
``llama-cpp-python`` (its Python server). The first run sets the engine up
(vLLM: its own virtual environment; llama-server: a build from source) and
caches it; then the server runs in the foreground, serving the embedded
SmolLM2 (or ``--model``), and once it answers GET /v1/models this prints its
``base_url`` as the only line on stdout (the engine's own log goes to
stderr), followed by the sweep command that uses it on stderr. Ctrl-C or
SIGTERM stops it. ``--setup-only`` sets up and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from experiments.errors import HarnessInputError
from experiments.servers.cached_setup import EngineUnavailable, SetupFailed, say
from experiments.servers.engines import ENGINES, SERVED_NAME, ServeOptions, prepare
from experiments.servers.process import ServerFailed, ServerProcess, free_port

STOP_GRACE_S = 20.0  # after SIGTERM or Ctrl-C, how long the engine may take to exit before SIGKILL


def parse_args(argv: list[str]) -> tuple[ServeOptions, bool]:
    """The options, and whether to set up only."""
    engine_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, engine_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(prog="scripts/serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=list(ENGINES))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: 8000)")
    parser.add_argument("--model", type=Path, help="a GGUF file (vllm: or a transformers folder); "
                                                   "default: the embedded SmolLM2")
    parser.add_argument("--served-name", default=SERVED_NAME, help=f"model name in GET /models "
                                                                   f"(backend.model; default {SERVED_NAME})")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server: requests decoded together")
    parser.add_argument("--ctx", type=int, default=2048, help="context length per request")
    parser.add_argument("--threads", type=int, help="llama.cpp engines: CPU threads")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="vllm: weights' precision "
                                                                          "(default: bfloat16 where native)")
    parser.add_argument("--api-key-env", help="NAME of an environment variable with a key the server will require")
    parser.add_argument("--setup-only", action="store_true", help="set the engine up (cached) and exit")
    args = parser.parse_args(argv)
    if args.port < 0 or args.port > 65535:
        parser.error(f"--port {args.port}: expected 0 to 65535")
    if args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: expected an integer >= 1")
    if args.ctx < 16:
        parser.error(f"--ctx {args.ctx}: expected an integer >= 16")
    port = free_port(args.host) if args.port == 0 else args.port
    options = ServeOptions(args.engine, args.host, port, args.model, args.served_name, args.parallel, args.ctx,
                           args.threads, args.dtype, args.api_key_env, tuple(engine_args))
    return options, args.setup_only


def main(argv: list[str] | None = None) -> int:
    options, setup_only = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        launch = prepare(options)
    except (EngineUnavailable, SetupFailed, HarnessInputError) as error:
        print(f"serve {options.engine}: {error}", file=sys.stderr)
        return 3 if isinstance(error, EngineUnavailable) else 2 if isinstance(error, HarnessInputError) else 1
    if setup_only:
        say(f"{launch.engine} is set up")
        return 0

    # The engine shares our process group: whoever stops us (Ctrl-C, a test's killpg) stops it too.
    server = ServerProcess(launch.argv, launch.base_url, launch.env, api_key=launch.api_key, name=launch.engine,
                           new_session=False)
    stopping = []

    def stop(signum, _frame):
        # Only signal here: the main thread may be inside server.process.wait(), and a wait in this handler
        # (server.stop()) would block on that wait's lock for ever. SIGKILL follows after STOP_GRACE_S.
        if not stopping:
            server.terminate()
            escalate = threading.Timer(STOP_GRACE_S, server.kill)
            escalate.daemon = True
            escalate.start()
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    say(f"starting {launch.engine}: {' '.join(launch.argv)}")
    try:
        server.start(launch.ready_timeout_s)
    except ServerFailed as error:
        if stopping:
            return 128 + stopping[0]
        print(f"serve {launch.engine}: {error}", file=sys.stderr)
        return 1
    print(launch.base_url, flush=True)
    model = "" if launch.served_name == SERVED_NAME else f" backend.model={launch.served_name}"
    say(f"{launch.engine} answers at {launch.base_url}, serving {launch.served_name!r}; a sweep through it:\n"
        f"  harness-generate backend=openai backend.profile={launch.profile} backend.base_url={launch.base_url}"
        + model)
    code = server.process.wait()
    return 128 + stopping[0] if stopping else code


if __name__ == "__main__":
    sys.exit(main())
