"""
Reactor turns a listening port needs to accept a burst of connections that
wait in its queue after a quiet moment (the port last found one waiting):
Twisted's C{Port.doRead} accepts C{numberAccepts} per turn and sets it to
what the last turn found, raising it by 20 after a full turn;
C{web.admission.EagerAcceptPort} (issue 23; the proxy's channel swaps its
port to it) keeps it at 100 or more.  The count
does not depend on the machine's load.

    PYTHONPATH=TREE/src python bench/acceptturns.py [N]
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory, Protocol

try:
    from ollama_proxy.web.admission import acceptEagerly
except ImportError:  # an older build
    def acceptEagerly(port: object) -> bool:
        return False

reactor: Any = _reactor


class Accepted(Protocol):
    count = 0

    def connectionMade(self) -> None:
        acceptEagerly(getattr(self.transport, "server", None))  # what FastChannel does
        Accepted.count += 1


def main(n: int) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Accepted), backlog=4096, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    clients = [socket.create_connection(address)]
    port.doRead()  # a quiet turn: one waiting
    clients += [socket.create_connection(address) for _ in range(n)]
    turns, sizes = 0, []
    while Accepted.count < n + 1:
        before = Accepted.count
        port.doRead()
        turns += 1
        sizes.append(Accepted.count - before)
    print(f"{n} waiting connections accepted in {turns} turns: {sizes}")
    for c in clients:
        c.close()
    port.stopListening()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
