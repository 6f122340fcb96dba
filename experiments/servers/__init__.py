"""OpenAI-compatible servers the harness can start: vLLM, llama.cpp's llama-server, llama-cpp-python's server.

``python -m experiments.serve ENGINE`` (``scripts/serve``) sets an engine up
once (cached under the harness cache), serves the embedded SmolLM2 on
loopback in the foreground and prints its ``base_url`` once it answers.
Tests and benchmarks start servers through the same code (``ServerProcess``).

- ``engines``: what each engine needs and its command line.
- ``vllm``: vLLM CPU in a virtual environment of its own.
- ``llama_server``: llama.cpp's ``llama-server``, built from source once per CPU.
- ``cached_setup``: the "once, cached, safe when two jobs start together" part.
- ``process``: a server process on a port: started, waited for, killed, restarted.
"""
