"""
ollama-proxy: speak the Ollama REST API to clients, forward to an
OpenAI-compatible backend.

The package is a thin Twisted shell (L{ollama_proxy.resources},
L{ollama_proxy.relay}, L{ollama_proxy.tap}) around pure protocol code
(L{ollama_proxy.translate}, L{ollama_proxy.sse}) so that the parts that can be
wrong on the wire are testable without a reactor.
"""

from ollama_proxy._version import __version__

__all__ = ["__version__"]
