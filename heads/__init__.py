"""Output heads of the shared transformer (leaf package: depends on torch only, never on `mmar`).

Registry key = file stem = class. A new head is one file plus one line here; the contract test in
tests/test_head_contract.py then covers it.
"""

from heads.base import IGNORE_INDEX, Head, HeadOutput, HeadSpec
from heads.flow_matching import FlowMatching
from heads.next_scale import NextScale
from heads.next_token import NextToken

HEADS: dict[str, type[Head]] = {
    "flow_matching": FlowMatching,
    "next_token": NextToken,
    "next_scale": NextScale,
}

__all__ = ["HEADS", "IGNORE_INDEX", "Head", "HeadOutput", "HeadSpec"]
