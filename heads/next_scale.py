"""Next-scale head: a softmax over the shared multi-scale codebook, one whole scale per call (VAR).

The head itself is VAR's: a linear classifier per position. What makes generation next-scale lives
elsewhere, by design: `pack` gives every scale one attention block, the tokenizer supplies each
scale's input vectors, and `generate` asks for all positions of a scale in one transformer call
and may grow the guidance scale with the scale index. Tian et al. 2024, arXiv:2404.02905.
"""

from __future__ import annotations

from dataclasses import dataclass

from heads.next_token import NextToken


@dataclass
class NextScaleConfig:
    bias: bool = False


class NextScale(NextToken):
    Config = NextScaleConfig
    token_kinds = ("scales",)
