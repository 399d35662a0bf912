"""Data spec strings: the grammar, the parser and its errors.

A data spec names a data set and which of its samples to use, e.g. ``digits``,
``cifar10[train:0:2500,test:0:1000]``, ``npz:/data/tokens.npz[test]``, or the name form of
Wei, Hu & Steinhardt's empirical-ntks ("More Than a Toy", ICML 2022), ``CIFAR-10_0_2500_0_1000``.

Parsing is pure: it checks the syntax and the names but reads no file. Bounds are checked when
the data is loaded, because only then is the size of each part known (see :mod:`.loaders`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace

__all__ = [
    "DATASET_NAMES",
    "DATA_GRAMMAR",
    "PARTS",
    "DataSpec",
    "DataSpecError",
    "DataTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PartSlice",
    "parse_spec",
]

#: The data sets ntkit knows by name (``npz:PATH`` is the way in for anything else).
DATASET_NAMES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")

#: The partitions every named data set has, in their concatenation order.
PARTS: tuple[str, ...] = ("train", "test")

DATA_GRAMMAR = """\
Data spec grammar:
  SPEC   := NAME ['[' SEL (',' SEL)* ']']       samples of a named data set
          | 'npz:' PATH ['[' SEL (',' SEL)* ']']  arrays x, y (and x_test, y_test) of a .npz file;
                                              without x, every other array is a keyword input
                                              of the model (input_ids=..., attention_mask=...;
                                              NAME_test for the test part)
          | EMPIRICAL                           the empirical-ntks name form
          | SPEC ':' TRANSFORM (',' TRANSFORM)*   the samples transformed (see TRANSFORM)
  NAME   := digits | cifar10 | cifar100 | mnist | fashion-mnist
  SEL    := PART                                a whole part
          | PART ':' [START] ':' [STOP] [':' STEP]
          | [START] ':' [STOP] [':' STEP]       a slice of 'train'
  PART   := train | test
  A plain NAME means NAME[train]. Several SELs are concatenated in order. START/STOP/STEP work
  like Python slices (negative counts from the end, empty means the end), STEP >= 1; bounds
  outside the part are an error, never clipped.
  EMPIRICAL := DATASET ['_' TRAIN_START '_' TRAIN_STOP '_' TEST_START '_' TEST_STOP]
    with DATASET any spelling other than the lowercase names above: CIFAR-10, CIFAR-100, MNIST,
    Fashion-MNIST, FashionMNIST (case-insensitive). Rows are train[TRAIN_START:TRAIN_STOP]
    followed by test[TEST_START:TEST_STOP], columns are train[TRAIN_START:TRAIN_STOP];
    without the numbers, rows are all of train then all of test, columns all of train.
  TRANSFORM := resize=S                 images scaled so the shorter side is S pixels (bilinear,
                                           antialiased, as torchvision's Resize(S)), per batch
             | normalize=dataset|imagenet|none   the data set's own mean/std (the default),
                                           ImageNet's (0.485,0.456,0.406)/(0.229,0.224,0.225),
                                           or none (pixels / 255 only)
    A model with ImageNet weights (resnet-18_pretrained) implies resize=224,normalize=imagenet
    for data written without TRANSFORMs, as empirical-ntks transforms CIFAR.
  Examples: digits, digits[test], mnist[0:1000], cifar10[train:0:2500,test:0:1000],
    cifar10[train:::10], npz:tokens.npz[train,test], CIFAR-10_0_2500_0_1000,
    CIFAR-10_0_2500_0_1000:resize=224,normalize=imagenet
  Files for cifar10, cifar100, mnist, fashion-mnist are looked for under --data-dir DIR or
  $NTKIT_DATA."""


class DataSpecError(ValueError):
    """A malformed or unknown data spec; the message ends with :data:`DATA_GRAMMAR`."""

    def __init__(self, message: str) -> None:
        # Unpickling (e.g. from a worker process) passes the full message back in: keep it whole.
        reason = message.removesuffix(f"\n\n{DATA_GRAMMAR}")
        super().__init__(f"{reason}\n\n{DATA_GRAMMAR}")
        self.reason = reason  # without the grammar, for callers that show it elsewhere


@dataclass(frozen=True)
class PartSlice:
    """``part[start:stop:step]``; ``None`` bounds mean what they mean in Python.

    As parsed, ``size`` is ``None``. :meth:`resolve` fills in absolute bounds and ``size``, the
    number of samples in the whole part, so that a resolved slice knows whether it is all of it.
    """

    part: str
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    size: int | None = None

    def resolve(self, size: int, *, spec: str = "") -> PartSlice:
        """Absolute bounds for a part of ``size`` samples; out-of-range or empty is an error."""
        where = f"{spec}: " if spec else ""
        for label, bound in (("start", self.start), ("stop", self.stop)):
            if bound is not None and not -size <= bound <= size:
                raise DataSpecError(
                    f"{where}{label} {bound} is out of range for part '{self.part}' with "
                    f"{size} samples (valid bounds: {-size}..{size})"
                )
        start, stop, step = slice(self.start, self.stop, self.step).indices(size)
        count = len(range(start, stop, step))
        if count == 0:
            raise DataSpecError(f"{where}'{self.text()}' selects none of the {size} samples in '{self.part}'")
        # Canonical stop: one past the last selected index, so equal selections print alike.
        return PartSlice(self.part, start, start + (count - 1) * step + 1, step, size)

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError(f"'{self.text()}' has no length before it is resolved")
        return len(range(*slice(self.start, self.stop, self.step).indices(self.size)))

    def text(self) -> str:
        """This selection in spec syntax, e.g. ``train:0:2500``; a whole part prints as ``train``."""
        whole = (self.start, self.stop, self.step) in ((None, None, None), (None, None, 1))
        if self.size is not None:
            whole = whole or (self.start, self.stop, self.step) == (0, self.size, 1)
        if whole:
            return self.part
        bounds = f"{_num(self.start)}:{_num(self.stop)}"
        if self.step not in (None, 1):
            bounds += f":{self.step}"
        return f"{self.part}:{bounds}"


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
_NORMALIZE = ("dataset", "imagenet", "none")


@dataclass(frozen=True)
class DataTransform:
    """A data spec's ``:resize=S,normalize=...`` options (applied per batch when samples are read).

    ``resize``: the shorter image side in pixels, ``None`` to keep the size. ``normalize``:
    ``dataset`` (the data set's own mean and std), ``imagenet`` or ``none`` (only the division
    of the pixel counts, e.g. by 255).
    """

    resize: int | None = None
    normalize: str = "dataset"

    def text(self) -> str:
        """The options that differ from the defaults, e.g. ``resize=224,normalize=imagenet``."""
        parts = [] if self.resize is None else [f"resize={self.resize}"]
        if self.normalize != "dataset":
            parts.append(f"normalize={self.normalize}")
        return ",".join(parts)


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec.

    ``name`` is one of :data:`DATASET_NAMES` or ``"npz"`` (then ``path`` is the file as written).
    ``rows`` is the selection that :func:`~ntkit.data.load_data` returns; ``cols`` is the column
    selection of a kernel, set only by the empirical-ntks form (``None``: columns = rows).
    ``transform`` holds the ``:resize=...,normalize=...`` options, ``None`` when none are written.
    """

    name: str
    rows: tuple[PartSlice, ...]
    cols: tuple[PartSlice, ...] | None = None
    path: str | None = None
    text: str = ""
    transform: DataTransform | None = None

    @property
    def source(self) -> str:
        """The spec without a selection: ``cifar10`` or ``npz:PATH``."""
        return f"npz:{self.path}" if self.name == "npz" else self.name


_NAME_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_\-]*)(?:\[(?P<sel>[^\[\]]*)\])?$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_EMPIRICAL_RE = re.compile(r"^(?P<base>.*?)_(?P<a>\d+)_(?P<b>\d+)_(?P<c>\d+)_(?P<d>\d+)$")


def _key(name: str) -> str:
    """Spelling-insensitive key: ``CIFAR-10``, ``cifar_10`` and ``cifar10`` all give ``cifar10``."""
    return re.sub(r"[-_\s]", "", name.lower())


_BY_KEY = {_key(n): n for n in DATASET_NAMES}
# Names the empirical-ntks repository and torchvision use, for suggestions in error messages.
_KNOWN_SPELLINGS = (*DATASET_NAMES, "CIFAR-10", "CIFAR-100", "MNIST", "Fashion-MNIST", "FashionMNIST")


def _unknown(name: str, spec: str) -> DataSpecError:
    close = difflib.get_close_matches(name, _KNOWN_SPELLINGS, n=1, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name.lower(), (*DATASET_NAMES, "npz:"), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = "" if spec.strip() == name else f" in spec {spec!r}"
    known = ", ".join(DATASET_NAMES) + ", npz:PATH"
    return DataSpecError(f"unknown data set '{name}'{hint}{where}; known data sets: {known}")


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string (see :data:`DATA_GRAMMAR`); raises :class:`DataSpecError`.

    >>> [p.text() for p in parse_spec("cifar10[train:0:2500,test]").rows]
    ['train:0:2500', 'test']
    >>> parse_spec("CIFAR-10_0_2500_0_1000").cols
    (PartSlice(part='train', start=0, stop=2500, step=None, size=None),)
    """
    if not isinstance(spec, str):
        raise DataSpecError(f"a data spec is a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise DataSpecError("empty data spec")
    text, transform_text = _split_transform(text)
    if transform_text is not None:
        parsed = parse_spec(text)
        if parsed.transform is not None:
            raise DataSpecError(f"{spec!r} has two ':' option lists; write them as one, e.g. ':resize=224,normalize=imagenet'")
        return replace(parsed, text=spec, transform=_parse_transform(transform_text, spec))
    if text.lower().startswith("npz:"):
        return _parse_npz(text, spec)

    match = _NAME_RE.match(text)
    if match is None:
        raise DataSpecError(f"malformed data spec {spec!r}")
    raw_name, sel = match["name"], match["sel"]

    if sel is None:
        empirical = _parse_empirical(raw_name, spec)
        if empirical is not None:
            return empirical
    name = _BY_KEY.get(_key(raw_name))
    if name is None:
        raise _unknown(raw_name, spec)
    rows = _parse_selection(sel, spec) if sel is not None else (PartSlice("train"),)
    return DataSpec(name=name, rows=rows, text=spec)


_OPTION_ITEM_RE = re.compile(r"^\s*[A-Za-z_]+\s*=")


def _split_transform(text: str) -> tuple[str, str | None]:
    """``(data part, transform options text or None)``: the options are what follows the ':' after
    a selection's ']', or the last ':' when each of its comma items reads ``key=`` (a path never does)."""
    if "]" in text:
        body, rest = text[: text.rindex("]") + 1], text[text.rindex("]") + 1 :]
        if rest.startswith(":"):
            return body, rest[1:]
        return text, None
    body, colon, rest = text.rpartition(":")
    if colon and body.strip() and all(_OPTION_ITEM_RE.match(item) for item in rest.split(",")):
        return body.strip(), rest
    return text, None


def _parse_transform(text: str, spec: str) -> DataTransform:
    if ":" in text:
        raise DataSpecError(f"{spec!r} has two ':' option lists; write them as one, e.g. ':resize=224,normalize=imagenet'")
    resize: int | None = None
    normalize = "dataset"
    seen: set[str] = set()
    for item in text.split(","):
        key, eq, value = (s.strip() for s in item.partition("="))
        key = key.lower()
        if not eq or not value:
            raise DataSpecError(f"malformed transform option '{item.strip()}' in {spec!r}: expected key=value")
        if key in seen:
            raise DataSpecError(f"transform option '{key}' is given twice in {spec!r}")
        seen.add(key)
        if key == "resize":
            if not _INT_RE.match(value) or int(value) < 1:
                raise DataSpecError(f"resize={value} in {spec!r}: expected the shorter image side in pixels, e.g. resize=224")
            resize = int(value)
        elif key == "normalize":
            if value.lower() not in _NORMALIZE:
                close = difflib.get_close_matches(value.lower(), _NORMALIZE, n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DataSpecError(f"normalize={value} in {spec!r}{hint}: use one of {', '.join(_NORMALIZE)}")
            normalize = value.lower()
        else:
            close = difflib.get_close_matches(key, ("resize", "normalize"), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataSpecError(f"unknown transform option '{key}' in {spec!r}{hint}; options: resize, normalize")
    return DataTransform(resize=resize, normalize=normalize)


def _parse_npz(text: str, spec: str) -> DataSpec:
    body = text[len("npz:") :]
    sel = None
    # A selection is a trailing [...]; a '[' inside the path itself stays part of the path.
    if body.endswith("]") and "[" in body:
        cut = body.rindex("[")
        body, sel = body[:cut], body[cut + 1 : -1]
    path = body.strip()
    if not path:
        raise DataSpecError(f"'npz:' needs a file path, as in 'npz:data/arrays.npz' (got {spec!r})")
    rows = _parse_selection(sel, spec) if sel is not None else (PartSlice("train"),)
    return DataSpec(name="npz", rows=rows, path=path, text=spec)


def _parse_empirical(raw_name: str, spec: str) -> DataSpec | None:
    """The empirical-ntks form, or ``None`` when ``raw_name`` is an ntkit name (``cifar10``)."""
    match = _EMPIRICAL_RE.match(raw_name)
    base = match["base"] if match else raw_name
    name = _BY_KEY.get(_key(base))
    if name is None:
        if match:  # it has the numeric suffix, so it was meant as the empirical form
            raise _unknown(base, spec)
        return None
    if match is None and raw_name == name:
        return None  # a lowercase ntkit name: plain NAME means NAME[train]
    if match is None:
        train, test = PartSlice("train"), PartSlice("test")
    else:
        a, b, c, d = (int(match[k]) for k in "abcd")
        for lo, hi, part in ((a, b, "train"), (c, d, "test")):
            if lo >= hi:
                raise DataSpecError(f"{spec!r}: the {part} range {lo}_{hi} is empty (start must be < stop)")
        train, test = PartSlice("train", a, b), PartSlice("test", c, d)
    return DataSpec(name=name, rows=(train, test), cols=(train,), text=spec)


def _parse_selection(sel: str, spec: str) -> tuple[PartSlice, ...]:
    items = [item.strip() for item in sel.split(",")]
    if not any(items):
        raise DataSpecError(f"empty selection '[]' in {spec!r}")
    return tuple(_parse_item(item, spec) for item in items)


def _parse_item(item: str, spec: str) -> PartSlice:
    if not item:
        raise DataSpecError(f"empty selection item in {spec!r} (stray ',')")
    head, colon, rest = item.partition(":")
    if head.strip().lower() in PARTS:
        part = head.strip().lower()
        if not colon:
            return PartSlice(part)
        bounds = rest.split(":")
    elif head.strip() == "" or _INT_RE.match(head.strip()):
        part, bounds = "train", item.split(":")
    else:
        close = difflib.get_close_matches(head.strip().lower(), PARTS, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DataSpecError(f"unknown part '{head.strip()}'{hint} in {spec!r}; parts: {', '.join(PARTS)}")

    if len(bounds) not in (2, 3):
        raise DataSpecError(
            f"malformed selection '{item}' in {spec!r}: expected START:STOP or START:STOP:STEP"
        )
    values: list[int | None] = []
    for bound in bounds:
        bound = bound.strip()
        if bound and not _INT_RE.match(bound):
            raise DataSpecError(f"malformed bound '{bound}' in '{item}' of {spec!r}: expected an integer")
        values.append(int(bound) if bound else None)
    start, stop = values[0], values[1]
    step = values[2] if len(values) == 3 else None
    if step is not None and step < 1:
        raise DataSpecError(f"step {step} in '{item}' of {spec!r} must be >= 1")
    return PartSlice(part, start, stop, step)
