"""
Test and try-out helpers that ship with the package: a fake OpenAI-compatible
backend (L{ollama_proxy.testing.fake_openai}) and its twistd plugin wiring.
"""
