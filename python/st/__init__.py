"""st: SpatialThinker-7B on edge and desktop machines, from Python.

    import st
    engine = st.Engine("path/to/model")           # an `st export` directory or a Hugging Face checkpoint
    frame = engine.encode("photo.jpg")            # a path, bytes, a uint8 (H, W, 3) numpy array or a PIL image
    answer = engine.ask(frame, "Is the cup left of the plate? (A) yes (B) no")
    for o in answer.scene.objects:
        print(o.id, o.bbox)                       # boxes in pixels of the original image
    print(answer.answer.letter, answer.valid)

The model runs with the GIL released, so other Python threads go on meanwhile; for answers in
parallel give each thread its own `engine.clone()` (the weights are shared). Errors from st are
`st.StError` with st's message (naming the file, argument or limit).
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Tuple, Union

from . import _native
from ._native import Frame, StError

__all__ = ["Engine", "Frame", "Answer", "Scene", "SceneObject", "Relationship", "Choice", "Timings", "StError"]
__version__ = _native.__version__


@dataclass(frozen=True)
class SceneObject:
    """One object of the scene graph: `id` is "label.N", `bbox` is (x1, y1, x2, y2) in original-image pixels."""

    id: str
    label: str
    bbox: Tuple[float, float, float, float]


@dataclass(frozen=True)
class Relationship:
    subject: str
    predicate: str
    object: str


@dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...] = ()
    relationships: Tuple[Relationship, ...] = ()


@dataclass(frozen=True)
class Choice:
    """The chosen option: its letter ("A", "B", …) when the answer starts with "(X)", and the text."""

    letter: Optional[str]
    text: str


@dataclass(frozen=True)
class Timings:
    preprocess_ms: float
    vision_ms: float
    prefix_prefill_ms: float
    prefill_ms: float
    decode_ms: Tuple[float, ...]
    decode_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        total = sum(self.decode_ms)
        return self.decode_tokens * 1e3 / total if total > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """The typed answer: the four sections, validity, tokens and timings."""

    observe: Optional[str]
    scene: Optional[Scene]
    think: Optional[str]
    answer: Optional[Choice]
    valid: bool
    reasons: Tuple[str, ...]
    raw: str
    token_ids: Tuple[int, ...]
    prompt_tokens: int
    reused_prompt_tokens: int
    stop: str
    timings: Timings
    _json: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def _from_json(cls, text: str) -> "Answer":
        v = json.loads(text)
        s = v.get("scene")
        scene = None
        if s is not None:
            scene = Scene(
                objects=tuple(SceneObject(o["id"], o["label"], tuple(o["bbox"])) for o in s["objects"]),
                relationships=tuple(Relationship(r["subject"], r["predicate"], r["object"]) for r in s["relationships"]),
            )
        a = v.get("answer")
        t = v["timings"]
        return cls(
            observe=v.get("observe"),
            scene=scene,
            think=v.get("think"),
            answer=None if a is None else Choice(a.get("letter"), a["text"]),
            valid=v["valid"],
            reasons=tuple(v["reasons"]),
            raw=v["raw"],
            token_ids=tuple(v["token_ids"]),
            prompt_tokens=v["prompt_tokens"],
            reused_prompt_tokens=v["reused_prompt_tokens"],
            stop=v["stop"],
            timings=Timings(
                preprocess_ms=t["preprocess_ms"],
                vision_ms=t["vision_ms"],
                prefix_prefill_ms=t["prefix_prefill_ms"],
                prefill_ms=t["prefill_ms"],
                decode_ms=tuple(t["decode_ms"]),
                decode_tokens=t["decode_tokens"],
            ),
            _json=v,
        )

    def to_dict(self) -> dict:
        """The answer as `st-run --json` prints it (image sizes and model included)."""
        return json.loads(json.dumps(self._json))

    def to_json(self) -> str:
        return json.dumps(self._json)

    def __repr__(self) -> str:
        letter = self.answer.letter if self.answer else None
        n = len(self.scene.objects) if self.scene else 0
        text = self.answer.text if self.answer else None
        return f"Answer(({letter}) {text!r}, {n} objects, valid={self.valid}, {len(self.token_ids)} tokens, stop={self.stop!r})"


ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


class Engine:
    """A loaded model. `model`: an `st export` directory or a Hugging Face checkpoint (exported once
    into st's cache). `device`: "cpu", "cuda[:N]" or "tensorrt[:N]"; `min_pixels` / `max_pixels`
    bound the resized image (default: the model's)."""

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]"],
        *,
        threads: Optional[int] = None,
        device: str = "cpu",
        cpu_fallback: bool = False,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        ort_lib: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        self._engine = _native.Engine(
            os.fspath(model),
            threads=threads,
            device=device,
            cpu_fallback=cpu_fallback,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            ort_lib=None if ort_lib is None else os.fspath(ort_lib),
        )

    def clone(self) -> "Engine":
        """Another engine over the same loaded weights with its own KV cache (for another thread)."""
        clone = Engine.__new__(Engine)
        clone._engine = self._engine.clone()
        return clone

    @property
    def model_dir(self) -> str:
        return str(self._engine.model[0])

    @property
    def device(self) -> str:
        return self._engine.model[1]

    def encode(self, image: ImageLike) -> Frame:
        """Encode an image once: a path, encoded bytes (PNG, JPEG, …), a uint8 numpy array of shape
        (H, W, 3), or a PIL image."""
        if isinstance(image, (str, os.PathLike)):
            return self._engine.encode_file(os.fspath(image))
        if isinstance(image, (bytes, bytearray, memoryview)):
            return self._engine.encode_bytes(bytes(image), "bytes")
        if hasattr(image, "__array_interface__") and hasattr(image, "shape") and hasattr(image, "dtype"):
            return self._encode_array(image)
        if hasattr(image, "mode") and hasattr(image, "tobytes") and hasattr(image, "size"):
            return self._encode_pil(image)
        raise TypeError(f"encode takes a path, bytes, a numpy array or a PIL image, not {type(image).__name__}")

    def _encode_array(self, a: Any) -> Frame:
        if str(a.dtype) != "uint8":
            raise ValueError(f"image array: dtype {a.dtype}, expected uint8")
        if len(a.shape) != 3 or a.shape[2] != 3:
            raise ValueError(f"image array: shape {tuple(a.shape)}, expected (height, width, 3) RGB")
        h, w = int(a.shape[0]), int(a.shape[1])
        if h == 0 or w == 0:
            raise ValueError(f"image array: shape {tuple(a.shape)} holds no pixel")
        return self._engine.encode_rgb(a.tobytes(order="C"), w, h)

    def _encode_pil(self, img: Any) -> Frame:
        if img.mode == "RGB":
            w, h = img.size
            return self._engine.encode_rgb(img.tobytes(), w, h)
        # Other modes go through st's own decoder (RGBA over white, 16-bit, palettes), as for files.
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return self._engine.encode_bytes(buf.getvalue(), f"PIL image ({img.mode})")

    def ask(
        self,
        frame: Frame,
        question: str,
        *,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        grammar: bool = True,
    ) -> Answer:
        """Answer `question` about `frame` (greedy unless `temperature`; grammar on: always a valid
        scene graph). `max_new_tokens` defaults to 2048 or what the context leaves."""
        text = self._engine.ask(
            frame,
            question,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            grammar=grammar,
        )
        return Answer._from_json(text)

    def ask_stream(self, frame: Frame, question: str, **options: Any) -> Iterator[str]:
        """`ask`, yielding the text as it is generated. Closing the iterator early stops generation.
        The last value's answer is in the iterator's `StopIteration.value` (or use `ask`)."""
        pieces: "queue.Queue[tuple]" = queue.Queue()
        stop = threading.Event()

        def on_token(text: str, _token_id: int) -> bool:
            if text:
                pieces.put(("piece", text))
            return stop.is_set()

        def run() -> None:
            try:
                pieces.put(("done", self._engine.ask(frame, question, on_token=on_token, **options)))
            except BaseException as e:  # handed to the consumer
                pieces.put(("error", e))

        worker = threading.Thread(target=run, name="st-ask-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = pieces.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return Answer._from_json(value)
        finally:
            stop.set()
            worker.join()
