"""Shared paths and the SpatialThinker prompt (docs/FORMATS.md#the-prompt) for the reference oracle."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CACHE = ROOT / ".cache"

# SpatialThinker inference instruction (model card); the question follows after a blank line.
INSTRUCTION = (
    "You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph "
    "in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue "
    "within <think> </think> tags and then provide the final answer. The final answer MUST BE put within "
    "<answer> </answer> tags, and only return the final choice including the correct option and answer "
    "within the answer tags, e.g., <answer> (A) cat </answer>.\n\nImage size: {width} x {height}"
)

QUESTION = "Is the cup to the left of the plate? (A) yes (B) no"

# Qwen2.5-VL's own chat template (docs/FORMATS.md#the-prompt).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def user_text(width: int, height: int, question: str = QUESTION) -> str:
    return INSTRUCTION.format(width=width, height=height) + "\n\n" + question


def spatialthinker_messages(width: int, height: int, question: str = QUESTION):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(width, height, question)}]}]


# Qwen2.5's special tokens, in id order after the base vocabulary (151643 … 151664 in the real one).
QWEN_SPECIALS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
]

# Qwen2's pre-tokenizer split pattern.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
