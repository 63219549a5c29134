"""
ollama-proxy: speak the Ollama REST API to clients, forward to an
OpenAI-compatible backend.

One translation hub, L{ollama_proxy.protocol} (pure: typed requests, reply
events, each client dialect's parser and encoder), behind thin layers:
L{ollama_proxy.upstream} (the backend, over treq), L{ollama_proxy.web}
(twisted.web resources) and L{ollama_proxy.service} (the twistd plugin's
options and wiring).  The parts that can be wrong on the wire are testable
without a reactor.
"""

from ollama_proxy._version import __version__

__all__ = ["__version__"]
