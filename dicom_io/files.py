"""Reading and writing DICOM files: tolerant when reading, strict and atomic when writing.

Reading accepts what real archives hold (no preamble, no File Meta Information, odd VRs) but turns
every way a file can be broken (empty, truncated, random bytes, structure that cannot be parsed)
into one `InvalidInputError` with a reason in words. Reasons name the problem, never a value read
from the file.

Writing serialises the whole dataset in memory first, then writes a temporary file in the target
folder, fsyncs it and renames it into place: a reader never sees a half-written output, and a
crash leaves at most a hidden temporary file.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from deid_core.errors import DeidGatewayError, InvalidInputError, RetryableError
from dicom_io.encode import fast_encode, fast_encode_parts

#: Smallest possible data set: one element header (tag + VR + length) and no value.
_MIN_BYTES = 8


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError | struct.error):
        return "truncated: the file ends inside a data element"
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file"
    if isinstance(exc, MemoryError | OverflowError):
        return "malformed: an element declares an impossible length"
    return f"malformed: cannot be parsed ({type(exc).__name__})"


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse_dataset(data: bytes) -> Dataset:
    """Parse DICOM file bytes; raise InvalidInputError with the reason when they are not usable.

    Files without the 128-byte preamble and "DICM" prefix are read with pydicom's force mode (old
    archives write bare data sets); the result must then still look like a data set (an even
    group at the start and a SOP Class UID), else it is random bytes."""
    if len(data) < _MIN_BYTES:
        raise InvalidInputError("empty or too short to be a DICOM file")
    standard = data[128:132] == b"DICM"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=not standard)
            # Touch the top level so structure errors surface here, not later.
            for _ in ds.keys():
                pass
        except InvalidInputError:
            raise
        except Exception as exc:
            raise InvalidInputError(_reason(exc)) from None
    if not standard:
        tags = list(ds.keys())
        if not tags or tags[0] >> 16 not in (0x0002, 0x0008) or 0x00080016 not in ds:
            raise InvalidInputError("not a DICOM file (no DICM prefix and no SOP Class UID)")
    for elem in ds._dict.values():
        # pydicom keeps what it could read of a value cut short by the end of the file.
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", 0)
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            raise InvalidInputError(
                f"truncated: the file ends inside element {_tag(elem.tag)} "
                f"({len(value)} of {length} bytes)"
            )
    return ds


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file; InvalidInputError (with the reason) when it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InvalidInputError("is a directory") from None
    except FileNotFoundError:
        raise InvalidInputError("no such file") from None
    except PermissionError:
        raise InvalidInputError("permission denied") from None
    except OSError as exc:
        raise RetryableError(f"cannot read file: {exc.strerror}") from None
    return parse_dataset(data)


def encode_dataset(ds: Dataset) -> bytes:
    """The complete file (preamble, File Meta Information, data set) in memory.

    Strict: the dataset must carry File Meta Information with a Transfer Syntax UID; the data set
    is written in that syntax."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise InvalidInputError("cannot write: no File Meta Information / Transfer Syntax UID")
    try:
        return fast_encode(ds)
    except Exception:  # anything unusual: pydicom's general writer below decides
        pass
    return reference_encode(ds)


def encode_dataset_parts(ds: Dataset) -> list[bytes]:
    """`encode_dataset` as pieces to write one after the other (see `fast_encode_parts`): a
    large instance is not held twice."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise InvalidInputError("cannot write: no File Meta Information / Transfer Syntax UID")
    try:
        return fast_encode_parts(ds)
    except Exception:  # anything unusual: pydicom's general writer decides
        pass
    return [reference_encode(ds)]


def reference_encode(ds: Dataset) -> bytes:
    """The file as pydicom's `dcmwrite` writes it (the fallback, and the tests' reference)."""
    buffer = io.BytesIO()
    ds.preamble = b"\x00" * 128
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        except Exception as exc:
            raise InvalidInputError(f"cannot encode the output ({type(exc).__name__})") from None
    return buffer.getvalue()


def write_atomic(data: bytes, path: str | Path, *, fsync: bool = True) -> None:
    """Write bytes to `path` atomically: temporary file, fsync, rename, then fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise RetryableError(f"cannot write output file: {exc.strerror}") from None
    except BaseException:
        _discard(tmp)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY if directory else os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files_atomic(
    items: list[tuple[bytes, Path]], *, fsync: bool = True
) -> list[DeidGatewayError | None]:
    """Write many files atomically, with one round of durability for all of them.

    Each file goes to a hidden temporary file beside its target; then all temporary files are
    fsynced at once (in threads, so the filesystem's journal commits them together instead of one
    commit per file), renamed into place, and their folders fsynced. A crash at any point leaves
    complete files or hidden temporary files, never a half-written output. Returns, per item,
    None or the error that kept that file from being written (the others still are)."""
    errors: list[DeidGatewayError | None] = [None] * len(items)
    temps: list[tuple[int, Path, Path]] = []
    for i, (data, path) in enumerate(items):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            temps.append((i, tmp, path))
        except OSError as exc:
            _discard(tmp)
            errors[i] = RetryableError(f"cannot write output file: {exc.strerror}")
    if fsync and temps:
        with ThreadPoolExecutor(max_workers=min(16, len(temps))) as pool:
            done = list(pool.map(lambda t: _try(_fsync_path, t[1]), temps))
        for (i, tmp, _), failure in zip(temps, done, strict=True):
            if failure is not None:
                errors[i] = RetryableError(f"cannot write output file: {failure.strerror}")
                _discard(tmp)
    folders: set[Path] = set()
    for i, tmp, path in temps:
        if errors[i] is not None:
            continue
        try:
            os.replace(tmp, path)
            folders.add(path.parent)
        except OSError as exc:
            _discard(tmp)
            errors[i] = RetryableError(f"cannot write output file: {exc.strerror}")
    if fsync and folders:
        with ThreadPoolExecutor(max_workers=min(16, len(folders))) as pool:
            list(pool.map(lambda d: _try(_fsync_path, d, True), folders))
    return errors


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _try(fn: Any, *args: Any) -> OSError | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc
    return None


def write_dataset(ds: Dataset, path: str | Path, *, fsync: bool = True) -> int:
    """Encode and atomically write a dataset; returns the number of bytes written."""
    data = encode_dataset(ds)
    write_atomic(data, path, fsync=fsync)
    return len(data)


__all__ = [
    "encode_dataset",
    "encode_dataset_parts",
    "parse_dataset",
    "read_dataset",
    "reference_encode",
    "write_atomic",
    "write_dataset",
    "write_files_atomic",
]
