"""Request ids: unique, 24 hex digits, a fresh prefix in a forked child."""

from __future__ import annotations

import os
import re

from llmgate.surfaces.http import new_request_id


def test_ids_are_unique_hex_of_the_old_length() -> None:
    ids = [new_request_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    assert len({i[:12] for i in ids}) == 1  # one process, one prefix


def test_a_forked_child_gets_its_own_prefix() -> None:
    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{24}", child)
    assert child[:12] != parent[:12]
