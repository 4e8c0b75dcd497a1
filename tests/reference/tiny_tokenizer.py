"""A small byte-level BPE with Qwen's pre-tokenizer and Qwen's special tokens (ids differ from
the real vocabulary on purpose: nothing in `st` may hard-code ids)."""
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from common import CHAT_TEMPLATE, INSTRUCTION, QWEN_PATTERN, QWEN_SPECIALS

CORPUS = [
    INSTRUCTION, CHAT_TEMPLATE,
    "<observe> A red cup stands on a wooden table next to a white plate. </observe>",
    '<scene> {"objects": [{"id": "cup.1", "bbox": [12, 40, 118, 160]}, {"id": "plate.1", "bbox": [150, 60, 300, 170]}], '
    '"relationships": [{"subject": "cup.1", "predicate": "left of", "object": "plate.1"}]} </scene>',
    "<think> The cup is at x = 12 to 118 and the plate starts at 150, so the cup is left of the plate. </think>",
    "<answer> (A) yes </answer>",
    "Is the cup to the left of the plate? (A) yes (B) no. Which object is closer to the camera, the chair or the lamp? "
    "How many people are in the image? Is there a dog behind the bike? (C) behind (D) in front of.",
    "The man is standing behind the bicycle, the car is parked in front of the building, above the door.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 448 336 224 112 28 14 3000 x 2000 Image size: 640 x 480",
] * 4


def train(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_SPECIALS])
    return tok
