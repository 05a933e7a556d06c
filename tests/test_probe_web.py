"""The web server against slow and vanishing clients (issue 24, items 13 and 16): request bodies that stop
arriving are answered 408 on the server's side while the page stays up, and an aborted upload is one console
line, not a traceback. Real HTTP on 127.0.0.1 only, a bounded number of connections for a few seconds."""

import dataclasses
import importlib.util
import socket
import threading
import time
import urllib.request

import pytest

from conftest import free_port, randomize, tiny_config
from linearsr.inference.jobs import LIMITS
from linearsr.inference.pipeline import LinearSR
from linearsr.model.network import LinearSRModel

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs the web extra")
UPLOAD_HEAD = (b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
               b"boundary=xx\r\nContent-Length: 1000000\r\n\r\n")
PART = b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


@pytest.fixture(scope="module")
def server():
    from linearsr.inference.web import serve

    limits = dataclasses.replace(LIMITS, body_idle_seconds=1.0, body_seconds=3.0)
    port = free_port()
    demo = serve(LinearSR(randomize(LinearSRModel(tiny_config())).eval()), port=port, block=False, quiet=True,
                 limits=limits)
    yield port
    demo.close()


def _slow_client(port: int, trickle: bool, answers: list) -> None:
    """Announce a 1 MB upload, then send nothing (or one byte every 0.4 s); record the answer and its time."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(UPLOAD_HEAD + PART)
        reply = b""
        s.settimeout(0.4 if trickle else 10)
        while time.monotonic() - start < 10:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                try:
                    s.sendall(b"x")  # keeps the idle timer from firing: only the total limit can end it
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
        answers.append((reply.split(b"\r\n", 1)[0], time.monotonic() - start, trickle))


def test_slow_request_bodies_are_answered_408_and_the_page_stays_up(server, capfd):
    answers: list = []
    clients = [threading.Thread(target=_slow_client, args=(server, i % 2 == 1, answers)) for i in range(24)]
    for c in clients:
        c.start()
    time.sleep(0.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/", timeout=5) as page:  # served meanwhile
        assert page.status == 200
    for c in clients:
        c.join(15)
    assert len(answers) == 24
    for status, seconds, trickle in answers:
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert (2.5 < seconds < 6) if trickle else (0.5 < seconds < 4)  # the total limit / the idle limit
    err = capfd.readouterr().err
    assert err.count("request body too slow") == 24 and "Traceback" not in err
    assert err.count("not complete after 3 s") == 12 and err.count("nothing for 1 s") == 12


def test_an_aborted_upload_is_one_line_not_a_traceback(server, capfd):
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
            s.sendall(UPLOAD_HEAD + PART + b"x" * 1000)
            time.sleep(0.1)
    time.sleep(1.0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "the client went away" in line]
    assert len(lines) == 5 and "Traceback" not in err and "ClientDisconnect" not in err, err
    assert lines[0].startswith("linearsr: POST /gradio_api/upload from 127.0.0.1")
