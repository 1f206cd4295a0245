"""TensorFlow DataType enum values, their names, sizes and numpy equivalents."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedError

STRING = 7
VARIANT = 21


@dataclass(frozen=True, slots=True)
class DType:
    """One DataType: enum value, TF name, bytes per element (0 if variable), numpy name."""

    enum: int
    name: str
    itemsize: int
    numpy_name: str | None

    @property
    def fixed_width(self) -> bool:
        return self.itemsize > 0

    def numpy(self):
        """The numpy dtype (ml_dtypes for bfloat16, float8, int4); imports numpy on first use."""
        if self.numpy_name is None:
            from ..errors import UnsupportedError

            raise UnsupportedError(f"dtype {self.name} has no numpy equivalent")
        return _numpy_dtype(self.numpy_name)


_TABLE = [
    # enum, TF name (numpy-style), itemsize, numpy dtype name
    (1, "float32", 4, "float32"),
    (2, "float64", 8, "float64"),
    (3, "int32", 4, "int32"),
    (4, "uint8", 1, "uint8"),
    (5, "int16", 2, "int16"),
    (6, "int8", 1, "int8"),
    (7, "string", 0, "object"),
    (8, "complex64", 8, "complex64"),
    (9, "int64", 8, "int64"),
    (10, "bool", 1, "bool"),
    (11, "qint8", 1, "int8"),
    (12, "quint8", 1, "uint8"),
    (13, "qint32", 4, "int32"),
    (14, "bfloat16", 2, "bfloat16"),
    (15, "qint16", 2, "int16"),
    (16, "quint16", 2, "uint16"),
    (17, "uint16", 2, "uint16"),
    (18, "complex128", 16, "complex128"),
    (19, "float16", 2, "float16"),
    (20, "resource", 0, None),
    (21, "variant", 0, None),
    (22, "uint32", 4, "uint32"),
    (23, "uint64", 8, "uint64"),
    (24, "float8_e5m2", 1, "float8_e5m2"),
    (25, "float8_e4m3fn", 1, "float8_e4m3fn"),
    (26, "float8_e4m3fnuz", 1, "float8_e4m3fnuz"),
    (27, "float8_e4m3b11fnuz", 1, "float8_e4m3b11fnuz"),
    (28, "float8_e5m2fnuz", 1, "float8_e5m2fnuz"),
    (29, "int4", 1, "int4"),
    (30, "uint4", 1, "uint4"),
    (31, "int2", 1, "int2"),
    (32, "uint2", 1, "uint2"),
    (33, "float4_e2m1fn", 1, "float4_e2m1fn"),
]

BY_ENUM: dict[int, DType] = {e: DType(e, n, s, np_name) for e, n, s, np_name in _TABLE}
BY_NAME: dict[str, DType] = {}
for _d in BY_ENUM.values():
    BY_NAME.setdefault(_d.name, _d)
BY_NAME.update(
    {
        "float": BY_ENUM[1],
        "double": BY_ENUM[2],
        "half": BY_ENUM[19],
        "bf16": BY_ENUM[14],
        "fp16": BY_ENUM[19],
        "fp32": BY_ENUM[1],
    }
)


def lookup(enum: int) -> DType | None:
    """The DType for an enum value, or None if unknown (including 0 and _REF types)."""
    return BY_ENUM.get(enum)


def require(enum: int) -> DType:
    """The DType for an enum value; UnsupportedError if ckptio does not know it."""
    info = BY_ENUM.get(enum)
    if info is None:
        raise UnsupportedError(f"unknown dtype enum {enum}")
    return info


def name_of(enum: int) -> str:
    d = BY_ENUM.get(enum)
    return d.name if d else f"DT_{enum}"


def from_numpy(dtype) -> DType:
    """The DType stored for a numpy dtype (object arrays are strings)."""
    import numpy as np

    dtype = np.dtype(dtype)
    name = "string" if dtype.kind in "OSU" else dtype.name
    for d in BY_ENUM.values():
        if d.name == name:
            return d
    raise TypeError(f"no TensorFlow dtype for numpy dtype {dtype}")


_NUMPY_CACHE: dict[str, object] = {}


def _numpy_dtype(name: str):
    dt = _NUMPY_CACHE.get(name)
    if dt is None:
        import numpy as np

        try:
            dt = np.dtype(name)
        except TypeError:  # bfloat16, float8_*, int4 ... live in ml_dtypes
            dt = np.dtype(_ml_dtype(name))
        _NUMPY_CACHE[name] = dt
    return dt


def _ml_dtype(name: str):
    """ml_dtypes' type for name; refused by name when the installed ml_dtypes lacks it."""
    from ..errors import UnsupportedError

    try:
        import ml_dtypes
    except ImportError:
        raise UnsupportedError(f"dtype {name} needs the ml_dtypes package, which is not installed") from None
    found = getattr(ml_dtypes, name, None)
    if found is None:  # e.g. float4_e2m1fn, int2 and uint2 came in ml_dtypes 0.5
        version = getattr(ml_dtypes, "__version__", "?")
        raise UnsupportedError(
            f"dtype {name} is not in the installed ml_dtypes {version}; upgrade ml_dtypes to read it"
        )
    return found
