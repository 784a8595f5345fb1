"""Modality tokenizers (leaf package: depends on torch only, never on `mmar`).

Registry key = file stem = class. A new tokenizer is one file plus one line here; the contract
test in tests/test_tokenizer_contract.py then covers it.
"""

from tokenizers_vq.audio_codec import AudioCodec
from tokenizers_vq.base import Tokenizer, TokenizerLoss, load_tokenizer
from tokenizers_vq.image_kl import ImageKL
from tokenizers_vq.image_vq import ImageVQ
from tokenizers_vq.multiscale_vq import MultiscaleVQ
from tokenizers_vq.text import Text
from tokenizers_vq.video_vq import VideoVQ

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "audio_codec": AudioCodec,
    "image_kl": ImageKL,
    "image_vq": ImageVQ,
    "multiscale_vq": MultiscaleVQ,
    "text": Text,
    "video_vq": VideoVQ,
}

__all__ = ["TOKENIZERS", "Tokenizer", "TokenizerLoss", "load_tokenizer"]
