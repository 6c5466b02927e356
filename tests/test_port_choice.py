"""The app keeps its port across a restart (#15 QA pass: a restarted app moved to the next port
for a minute, because the stopped app's connections lingered in TIME_WAIT), and still moves on
when someone listens there."""
from __future__ import annotations

import socket

import pytest

from lora_gui.ui.launch import free_port


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEADDR"), reason="POSIX sockets")
def test_a_port_left_in_time_wait_is_taken_again_and_a_listening_one_is_not():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert free_port("127.0.0.1", port) != port          # someone listens: the next one
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()                                      # the server side closes first: TIME_WAIT on `port`
    client.close()
    server.close()
    with socket.socket() as plain:                        # what a bind without SO_REUSEADDR meets
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert free_port("127.0.0.1", port) == port
