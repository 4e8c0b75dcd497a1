"""Type stubs of st's extension module (the typed API is st.Engine and st.Answer in st/__init__.py)."""

import os
from typing import Callable, Optional, Tuple, Union

__version__: str

class StError(Exception):
    """An error from st; the message names the file, argument or limit."""

class Frame:
    """An image encoded once (vision output and the prompt prefix's KV), asked about many times."""

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the original image: the space of every box."""
    @property
    def resized_size(self) -> Tuple[int, int]:
        """(width, height) the model saw after smart resize."""
    @property
    def image_tokens(self) -> int: ...
    @property
    def timings(self) -> Tuple[float, float, float, int]:
        """(preprocess_ms, vision_ms, prefix_prefill_ms, prefix_tokens)."""

class Engine:
    def __init__(
        self,
        model: Union[str, os.PathLike[str]],
        threads: Optional[int] = None,
        device: str = "cpu",
        cpu_fallback: bool = False,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        ort_lib: Optional[Union[str, os.PathLike[str]]] = None,
    ) -> None: ...
    def clone(self) -> "Engine": ...
    @property
    def model(self) -> Tuple[str, str]:
        """(exported model directory, device)."""
    def encode_file(self, path: Union[str, os.PathLike[str]]) -> Frame: ...
    def encode_bytes(self, data: bytes, name: str) -> Frame: ...
    def encode_rgb(self, data: bytes, width: int, height: int) -> Frame: ...
    def ask(
        self,
        frame: Frame,
        question: str,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        grammar: bool = True,
        on_token: Optional[Callable[[str, int], bool]] = None,
    ) -> str:
        """The answer as st-run --json's JSON text."""
