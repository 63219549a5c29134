"""
twistd plugins: C{ollama-proxy} (the proxy) and C{fake-openai} (the built-in
fake backend).

Kept import-light: L{ServiceMaker} loads the tap modules only when the
plugin is used, because C{twistd} imports every plugin module to list them.
"""

from twisted.application.service import ServiceMaker

ollamaProxy = ServiceMaker(
    "Ollama proxy",
    "ollama_proxy.service.tap",
    "Serve the Ollama API in front of an OpenAI-compatible backend.",
    "ollama-proxy",
)

fakeOpenAI = ServiceMaker(
    "Fake OpenAI backend",
    "ollama_proxy.testing.fake_tap",
    "A deterministic OpenAI-compatible server for try-outs and tests.",
    "fake-openai",
)
