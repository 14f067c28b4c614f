"""The Python client and bastion.js accept the same unsigned answers (the ones the server cannot sign)."""

from __future__ import annotations

import re
from pathlib import Path

from kernel.client import UNSIGNED
from kernel.core.errors import BY_NAME

BASTION_JS = Path(__file__).resolve().parents[1] / "kernel" / "static" / "bastion.js"


def test_both_clients_list_the_same_unsigned_answers_with_their_statuses():
    source = BASTION_JS.read_text(encoding="utf-8")
    block = re.search(r"var UNSIGNED = \{(.*?)\};", source, re.DOTALL).group(1)
    in_js = {name: int(status) for name, status in re.findall(r"(\w+): (\d+)", block)}
    assert set(in_js) == set(UNSIGNED)
    assert {name: BY_NAME[name].status for name in UNSIGNED} == in_js
