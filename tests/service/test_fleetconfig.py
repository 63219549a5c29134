"""
Tests for L{ollama_proxy.service.fleetconfig}: the C{[routing]} table and
a backend's C{priority}/C{weight}, through the file parser.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.balance import DEFAULT_ROUTING, PoolPolicy, RoutingPolicy
from ollama_proxy.service.config import ConfigError, parseConfig

TWO = '''\
[[backend]]
name = "local"
url = "http://127.0.0.1:8000/v1"
priority = 10
weight = 2
models = ["qwen"]
discover = false

[[backend]]
name = "cloud"
url = "https://gw.example/v1"
models = ["qwen"]
discover = false
'''


def error(source: str) -> ConfigError:
    try:
        parseConfig(source, "proxy.toml", {})
    except ConfigError as e:
        return e
    raise AssertionError("no ConfigError raised")


class RoutingConfigTests(SynchronousTestCase):
    """
    C{[routing]} and the member keys.
    """

    def test_defaults(self) -> None:
        """
        Without C{[routing]}: least-busy, not sticky, 3 attempts and
        failures, checks every 5 s; priority 0 and weight 1.
        """
        config = parseConfig(TWO.replace("priority = 10\nweight = 2\n", ""), "proxy.toml", {})
        self.assertEqual(config.routing, DEFAULT_ROUTING)
        self.assertEqual((config.backends[0].priority, config.backends[0].weight), (0, 1.0))
        self.assertEqual(DEFAULT_ROUTING.pool, PoolPolicy("least-busy", False))

    def test_everyKey(self) -> None:
        """
        Every key is read; a model's table takes the default for what it
        leaves out.
        """
        config = parseConfig(TWO + '''
[routing]
strategy = "round-robin"
attempts = 2
failures = 5
backoff = 1.5
backoff_max = 30
health_interval = 10
health_timeout = 1
sticky = true
sticky_ttl = 600
sticky_size = 50
[routing.models."qwen"]
strategy = "priority"
''', "proxy.toml", {})
        self.assertEqual(config.routing, RoutingPolicy(
            pool=PoolPolicy("round-robin", True), models={"qwen": PoolPolicy("priority", True)},
            attempts=2, failures=5, backoff=1.5, backoffMax=30.0, healthInterval=10.0,
            healthTimeout=1.0, stickyTTL=600.0, stickySize=50,
        ))
        self.assertEqual((config.backends[0].priority, config.backends[0].weight), (10, 2.0))

    def test_errorsNameLineAndKey(self) -> None:
        """
        A wrong value is refused with its line and key.
        """
        e = error(TWO + '\n[routing]\nstrategy = "fastest"\n')
        self.assertEqual((e.line, e.key), (16, "routing.strategy"))
        self.assertIn("least-busy", e.reason)
        e = error(TWO + '\n[routing]\nattempts = 0\n')
        self.assertEqual(e.key, "routing.attempts")
        e = error(TWO + '\n[routing]\nhealth_interval = -1\n')
        self.assertEqual(e.key, "routing.health_interval")
        e = error(TWO + '\n[routing]\nbogus = 1\n')
        self.assertEqual(e.key, "routing.bogus")
        e = error(TWO + '\n[routing.models."qwen"]\nattempts = 2\n')
        self.assertEqual(e.key, 'routing.models.qwen.attempts')
        e = error(TWO.replace("priority = 10", 'priority = "high"'))
        self.assertEqual((e.line, e.key), (4, "backend[0].priority"))
        e = error(TWO.replace("weight = 2", "weight = 0"))
        self.assertEqual(e.key, "backend[0].weight")
