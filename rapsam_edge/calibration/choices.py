"""The typed choices of ``rapsam-edge calibrate``: how ranges are estimated (:class:`Method`) and what the
quantized graph must look like on its target (:class:`Flavor`). Both are :class:`rapsam_edge.choices.Choice`
enums whose values are the words users type after ``--method`` and ``--flavor``; a bad word is refused by its
flag with the closest allowed word (:func:`check_word`, the sentence of every calibrate flag).

The two flavours differ because hardware differs (../shared/docs/toolchain.md, measured here):

* ``cpu`` — uint8 activations (asymmetric, any zero point) and int8 per-channel symmetric weights (U8S8):
  onnxruntime's x86 kernels run U8S8 fast (AVX2 ``vpmaddubsw``); S8S8 activations bring no speed-up there.
* ``tensorrt`` — symmetric int8 activations and weights, zero point 0, no int32 bias dequantization:
  the only explicit Q/DQ form TensorRT imports (:func:`rapsam_edge.onnx_qdq.symmetric_int8`).
"""

from __future__ import annotations

import difflib
from enum import Enum
from typing import TypeVar

from ..choices import Choice
from ..errors import InputError

C = TypeVar("C", bound="CalibrationChoice")


def check_word(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else one sentence naming ``flag``, the words and the closest one."""
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{flag} {value!r} is not one of {', '.join(allowed)}{hint}.")
    return value


class CalibrationChoice(Choice):
    """A calibrate option: :meth:`parse` refuses a bad word by its flag (:func:`check_word`)."""

    @classmethod
    def flag(cls) -> str:
        return f"--{cls.__name__.lower()}"

    @classmethod
    def parse(cls: type[C], value: C | str) -> C:
        word = value.value if isinstance(value, Enum) else value
        return cls(check_word(cls.flag(), str(word), tuple(m.value for m in cls)))


class Method(CalibrationChoice):
    """Range estimation of the activations. Each quantizer maps it to its library's own setting
    (:data:`rapsam_edge.calibration.quantizers.QUANTIZERS`) and refuses a method it lacks."""

    MINMAX = "minmax"
    ENTROPY = "entropy"  # KL divergence over 2048-bin histograms (onnxruntime); NNCF: its histogram estimator
    PERCENTILE = "percentile"  # 99.999 % by default (``--percentile``)


class Flavor(CalibrationChoice):
    """What the quantized graph must look like on its target (the module docstring says why two).

    Attributes:
        precision: the bundle artifact precision it produces.
        activation_dtype: ``uint8`` or ``int8``.
        symmetric_activations: zero point 0 on every activation (and then the symmetric-int8 rule of
            :func:`rapsam_edge.onnx_qdq.symmetric_int8` holds for the whole graph).
        quantize_bias: int32 bias dequantization (onnxruntime CPU only; TensorRT refuses it).
        why: one line for the manifest.
    """

    precision: str
    activation_dtype: str
    symmetric_activations: bool
    quantize_bias: bool
    why: str

    CPU = ("cpu", "int8-cpu", "uint8", False, True,
           "uint8 activations / int8 per-channel weights (U8S8): the fast integer path of onnxruntime on x86")
    TENSORRT = ("tensorrt", "int8-trt", "int8", True, False,
                "symmetric int8 / int8, zero point 0, float biases: what TensorRT's explicit Q/DQ import takes")

    def __new__(cls, word: str, precision: str, activation_dtype: str, symmetric_activations: bool,
                quantize_bias: bool, why: str) -> Flavor:
        member = str.__new__(cls, word)
        member._value_ = word
        member.precision = precision
        member.activation_dtype = activation_dtype
        member.symmetric_activations = symmetric_activations
        member.quantize_bias = quantize_bias
        member.why = why
        return member

    @property
    def weight_dtype(self) -> str:
        return "int8"  # both flavours: symmetric int8 weights

    @property
    def per_channel(self) -> bool:
        return True  # both flavours: one weight scale per output channel
