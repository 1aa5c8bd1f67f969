"""Loading data pickles (PYSKL annotations, MiGA labels) without letting them run code.

:func:`load_data_pickle` accepts plain containers, strings, numbers and numpy
arrays, and refuses every other class a pickle names, so a downloaded ``.pkl``
cannot execute anything. Pickles written by numpy 1 (``numpy.core``) and numpy
2 (``numpy._core``) load under either.

Worker processes import this module, so it imports neither torch nor the
dataset registry.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any

_PICKLE_ALLOWED = {
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "str"), ("builtins", "int"), ("builtins", "float"), ("builtins", "bytes"),
    ("builtins", "bytearray"), ("builtins", "slice"), ("_codecs", "encode"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED or (module == "numpy" and name.endswith("DType")):
            if module.startswith("numpy.core") or module.startswith("numpy._core"):
                # numpy 1 pickles name numpy.core, numpy 2 pickles numpy._core; load either with either
                tail = module.split(".", 2)[2]
                for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
                    with contextlib.suppress(ImportError, AttributeError):
                        return super().find_class(candidate, name)
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: "
                                     "a data pickle holds only lists, dicts and arrays")


def load_data_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle of lists, dicts, strings, numbers and numpy arrays.

    Raises:
        ValueError: the file is not such a pickle (the message names it).
    """
    try:
        with open(path, "rb") as stream:
            return _DataUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable data pickle ({type(error).__name__}: {error})") from None
