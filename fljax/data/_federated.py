"""Stacked, padded federations: every client array has a leading client axis."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

TASKS = ("classification", "regression", "survival")
STANDARDIZE = ("global", "client", "none")


class ClientData(NamedTuple):
    """One split of a federation (or a gathered subset of clients), as a pytree.

    Attributes:
        x: ``[C, N, ...]`` float32 features, padded with zeros past ``num_examples``.
        y: ``[C, N]`` labels (int32 for classification, float32 for regression), or
            ``[C, N, 2]`` float32 ``(time, event)`` for survival.
        num_examples: ``[C]`` int32 count of real examples per client.
    """

    x: Any
    y: Any
    num_examples: Any

    @property
    def mask(self):
        """``[C, N]`` bool, True for real (non-padded) examples."""
        n = self.x.shape[1]
        xp = jnp if isinstance(self.num_examples, jnp.ndarray) else np
        return xp.arange(n)[None, :] < self.num_examples[:, None]


def gather_clients(data: ClientData, client_ids) -> ClientData:
    """Selects clients ``client_ids[K]`` from ``data``; works on host and traced arrays."""
    return ClientData(*(jnp.take(a, client_ids, axis=0) for a in data))


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedData:
    """A federation of ``C`` clients with per-client train/test splits.

    Arrays are NumPy on the host; :func:`fljax.simulate` moves them to the device once.

    Attributes:
        train: training split, ``x[C, N, ...]``, ``y[C, N]``, ``num_examples[C]``.
        test: test split, ``x[C, M, ...]``, ``y[C, M]``, ``num_examples[C]``.
        task: ``"classification"``, ``"regression"`` or ``"survival"``.
        num_classes: number of classes (1 for regression and survival: one output).
        metrics: metric names of :mod:`fljax.metrics` evaluated on every client.
        loss_options: options of the task's loss (``cox_normalize`` for survival).
        name: dataset name.
        client_names: one name per client (hospital).
        info: how the federation was made (partition, seed, ...), JSON-serialisable.
        hosted: ``(first, stop)`` in a multi-process run: this process holds clients
            ``first..stop-1`` only (``x``, ``y`` have those rows; ``num_examples`` and
            ``client_names`` cover every client). ``None``: the whole federation.
    """

    train: ClientData
    test: ClientData
    task: str = "classification"
    num_classes: int = 2
    name: str = "custom"
    client_names: tuple[str, ...] = ()
    info: dict = dataclasses.field(default_factory=dict)
    metrics: tuple[str, ...] | None = None
    loss_options: dict = dataclasses.field(default_factory=dict)
    hosted: tuple[int, int] | None = None

    def __post_init__(self):
        from fljax import metrics as M

        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {TASKS}")
        names = M.DEFAULT_METRICS[self.task] if self.metrics is None else self.metrics
        object.__setattr__(self, "metrics", M.check_metrics(self.task, names, self.num_classes))
        for split_name, split in (("train", self.train), ("test", self.test)):
            x, y, n = split
            y_ndim = 3 if self.task == "survival" else 2
            if x.ndim < 2 or y.ndim != y_ndim or n.ndim != 1:
                expected_y = "y[C, N, 2]" if self.task == "survival" else "y[C, N]"
                raise ValueError(
                    f"{split_name}: expected x[C, N, ...], {expected_y}, num_examples[C] for "
                    f"task={self.task!r}; got shapes {x.shape}, {y.shape}, {n.shape}"
                )
            rows = n.shape[0] if self.hosted is None else self.hosted[1] - self.hosted[0]
            if not (x.shape[0] == y.shape[0] == rows) or x.shape[1] != y.shape[1]:
                raise ValueError(
                    f"{split_name}: mismatched shapes x{x.shape}, y{y.shape}, num_examples{n.shape}"
                )
            if self.hosted is not None and not (0 <= self.hosted[0] <= self.hosted[1]
                                                <= n.shape[0]):  # fmt: skip
                raise ValueError(f"hosted={self.hosted} must lie within [0, {n.shape[0]}]")
            if np.any(n < 0) or np.any(n > x.shape[1]):
                raise ValueError(f"{split_name}.num_examples must lie in [0, {x.shape[1]}]")
            if not np.all(np.isfinite(x)):
                bad = np.argwhere(~np.isfinite(x))[0]
                raise ValueError(
                    f"{split_name}.x has NaN or inf values (first at client {bad[0]}, "
                    f"example {bad[1]}); clean or impute the data before federating it"
                )
            if not np.all(np.isfinite(y)):
                raise ValueError(f"{split_name}.y has NaN or inf values")
            if self.task == "classification" and y.size:
                if np.any(y < 0) or np.any(y >= self.num_classes):
                    raise ValueError(
                        f"{split_name}.y has labels outside [0, num_classes={self.num_classes})"
                    )
        if self.test.num_examples.shape[0] != self.train.num_examples.shape[0]:
            raise ValueError("train and test must have the same number of clients")
        if self.train.x.shape[2:] != self.test.x.shape[2:]:
            raise ValueError("train and test feature shapes differ")
        if not self.client_names:
            object.__setattr__(
                self, "client_names", tuple(f"client_{i}" for i in range(self.num_clients))
            )
        if len(self.client_names) != self.num_clients:
            raise ValueError("client_names must have one name per client")

    @property
    def num_clients(self) -> int:
        return int(np.shape(self.train.num_examples)[0])

    @property
    def num_examples(self) -> np.ndarray:
        """``[C]`` training examples per client (the FedAvg weights)."""
        return np.asarray(self.train.num_examples)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[2:])

    def gather(self, client_ids) -> ClientData:
        """Training data of clients ``client_ids[K]``: ``x[K, N, ...]``, ``y[K, N]``, ``n[K]``."""
        self.whole("gather")
        return gather_clients(self.train, client_ids)

    def sample(self) -> np.ndarray:
        """A one-example batch ``[1, ...]`` for model initialisation (zeros when this process
        holds part of the federation: every process must initialise the same model)."""
        if self.hosted is not None:
            return np.zeros((1, *self.feature_shape), np.asarray(self.train.x).dtype)
        return np.asarray(self.train.x[0, :1])

    def whole(self, what: str) -> None:
        """Raises when this process holds only part of the federation (``hosted``): ``what``
        needs every client's data in one process."""
        if self.hosted is not None:
            raise ValueError(
                f"{what} needs every client's data in one process, but this process of a "
                f"multi-process run holds clients {self.hosted[0]}..{self.hosted[1] - 1} of "
                f"{self.num_clients} only; run it in a single process"
            )

    def hosting(self, rows: range) -> FederatedData:
        """This federation restricted to clients ``rows`` (a contiguous block, e.g.
        :func:`fljax.distributed.hosted_rows`): what one process of a multi-process run
        keeps; ``num_examples`` and names still cover every client."""
        self.whole("hosting")
        lo, hi = rows.start, rows.stop

        def part(split):
            return ClientData(np.asarray(split.x)[lo:hi], np.asarray(split.y)[lo:hi],
                              np.asarray(split.num_examples))  # fmt: skip

        return dataclasses.replace(self, train=part(self.train), test=part(self.test),
                                   hosted=(lo, hi))  # fmt: skip

    def __repr__(self) -> str:
        part = "" if self.hosted is None else f"hosted={self.hosted}, "
        return (
            f"FederatedData(name={self.name!r}, clients={self.num_clients}, {part}"
            f"features={self.feature_shape}, task={self.task!r}, classes={self.num_classes}, "
            f"train={int(self.train.num_examples.sum())}, test={int(self.test.num_examples.sum())})"
        )


def select_clients(data: FederatedData, client_ids: Sequence[int]) -> FederatedData:
    """The reduced federation of clients ``client_ids`` (distinct, in that order): their
    train and test splits and names; what a run of ``simulate(subsets=[mask])`` trains on."""
    data.whole("select_clients")
    ids = [int(i) for i in client_ids]
    if not ids or len(set(ids)) != len(ids) or not all(0 <= i < data.num_clients for i in ids):
        raise ValueError(f"client_ids must be distinct clients in [0, {data.num_clients}), "
                         f"at least one, got {list(client_ids)}")  # fmt: skip
    take = lambda split: ClientData(*(np.asarray(a)[ids] for a in split))  # noqa: E731
    return dataclasses.replace(data, train=take(data.train), test=take(data.test),
                               client_names=tuple(data.client_names[i] for i in ids))  # fmt: skip


def drop_empty_clients(data: FederatedData) -> FederatedData:
    """``data`` without its clients that have no training examples (they would be selected,
    counted as participants and in bytes, and dilute uniform weighting, while training
    nothing); their names are listed in ``info["dropped_empty_clients"]``."""
    data.whole("drop_empty_clients")
    nonempty = np.asarray(data.train.num_examples) > 0
    keep = np.flatnonzero(nonempty)
    if keep.size == 0:
        raise ValueError(f"dataset {data.name!r}: no client has training examples")
    dropped = [n for n, m in zip(data.client_names, nonempty, strict=True) if not m]
    if not dropped:
        return data
    kept = select_clients(data, keep)
    return dataclasses.replace(kept, info=dict(data.info) | {"dropped_empty_clients": dropped})


def stack_clients(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], y_dtype,
                  n_max: int | None = None, shapes: tuple | None = None) -> ClientData:  # fmt: skip
    """Pads per-client arrays ``xs[i]: [n_i, ...]`` into ``x[C, max n_i, ...]`` (zero padding).

    ``n_max`` (default ``max n_i``) and ``shapes = (feature shape, label shape)`` (default
    the first client's) fix the padded layout when ``xs`` is only some of the federation's
    clients (a process's hosted block, possibly empty)."""
    num = np.array([len(x) for x in xs], dtype=np.int32)
    n_max = max(int(num.max()), 1) if n_max is None else n_max
    feat, y_shape = (xs[0].shape[1:], np.asarray(ys[0]).shape[1:]) if shapes is None else shapes
    x = np.zeros((len(xs), n_max, *feat), dtype=np.float32)
    y = np.zeros((len(xs), n_max, *y_shape), dtype=y_dtype)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[i, : len(xi)] = xi
        y[i, : len(yi)] = yi
    return ClientData(x, y, num)


def standardize_clients(
    train_xs: list[np.ndarray], test_xs: list[np.ndarray], mode: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Z-scores features with statistics of the TRAINING splits only (no test leakage).

    ``"global"``: the pooled training mean/std, i.e. what a federated computation of per-client
    sums and sums of squares gives; ``"client"``: each client's own training statistics (FLamby's
    Fed-Heart-Disease choice); ``"none"``: unchanged. Constant features get std 1. Computed in
    float64 (the federation stores float32).
    """
    if mode not in STANDARDIZE:
        raise ValueError(f"standardize={mode!r} is not one of {STANDARDIZE}")
    if mode == "none":
        return train_xs, test_xs

    # In float64: a float32 sum of squares overflows for a feature spread ~1e18 (std inf,
    # the feature standardized to zeros) and loses digits long before that.
    train_xs = [np.asarray(x, np.float64) for x in train_xs]
    test_xs = [np.asarray(x, np.float64) for x in test_xs]

    def stats(x):
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        return mean, np.where(std > 0, std, 1.0)

    if mode == "global":
        mean, std = stats(np.concatenate(train_xs))
        return [(x - mean) / std for x in train_xs], [(x - mean) / std for x in test_xs]
    out_train, out_test = [], []
    for xtr, xte in zip(train_xs, test_xs, strict=True):
        mean, std = stats(xtr) if len(xtr) else (0.0, 1.0)
        out_train.append((xtr - mean) / std)
        out_test.append((xte - mean) / std)
    return out_train, out_test


def _check_rows(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], split: str) -> None:
    """Refuses a client whose features and labels have different numbers of rows (the
    stacking would pair examples with the wrong labels or pad them silently)."""
    for c, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if len(x) != len(y):
            raise ValueError(f"{split} client {c}: {len(x)} rows of features but {len(y)} "
                             "labels; each example needs one label")  # fmt: skip


def _check_labels(ys: Sequence[np.ndarray], split: str, task: str,
                  num_classes: int | None) -> None:  # fmt: skip
    """Refuses labels that the task's dtype would silently change: non-integer or negative
    class labels (probabilities or soft labels would be truncated), classes outside
    ``num_classes``, non-finite targets, negative survival times or events other than 0/1.
    The message names the split, the client and the value."""
    for c, y in enumerate(ys):
        y = np.asarray(y)
        where = f"{split} client {c}"
        if y.size and not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            raise ValueError(f"{where}: labels must be numbers, got dtype {y.dtype}")
        if not y.size:
            continue
        if task != "classification" and not np.isfinite(y).all():
            raise ValueError(f"{where}: targets must be finite, got {y[~np.isfinite(y)][0].item()}")
        if task == "classification":
            bad = ~np.isfinite(y) | (y != np.round(y)) | (y < 0)
            if num_classes is not None:
                bad |= y >= num_classes
            if bad.any():
                allowed = "0, 1, ..." if num_classes is None else f"0..{int(num_classes) - 1}"
                first = y[bad].ravel()[0].item()
                raise ValueError(f"{where}: classification labels must be class indices "
                                 f"{allowed}, got {first!r} (hard labels, e.g. the argmax of "
                                 "probabilities)")  # fmt: skip
        if task == "survival":
            if y.ndim != 2 or y.shape[1] != 2:
                raise ValueError(f"{where}: survival targets must be [N, 2] (time, event), "
                                 f"got shape {y.shape}")  # fmt: skip
            if (y[:, 0] < 0).any() or not np.isin(y[:, 1], (0, 1)).all():
                raise ValueError(f"{where}: survival times must be >= 0 and events 0 or 1")


def from_client_arrays(
    train_xs: Sequence[np.ndarray],
    train_ys: Sequence[np.ndarray],
    test_xs: Sequence[np.ndarray],
    test_ys: Sequence[np.ndarray],
    *,
    task: str = "classification",
    num_classes: int | None = None,
    name: str = "custom",
    client_names: Sequence[str] = (),
    info: dict | None = None,
    metrics: Sequence[str] | None = None,
    loss_options: dict | None = None,
    hosted: tuple | None = None,
) -> FederatedData:
    """Builds a :class:`FederatedData` from lists of per-client arrays (any sizes).

    ``hosted``: ``(rows, train counts[C], test counts[C], feature shape, label shape)`` when
    the lists hold only the clients ``rows`` (a range) of a multi-process run (the counts of
    every client fix the padded sizes); ``num_classes`` must then be given.
    """
    if hosted is not None:
        return _hosted_from_arrays(train_xs, train_ys, test_xs, test_ys, hosted, task=task,
                                   num_classes=num_classes, name=name,
                                   client_names=client_names, info=info, metrics=metrics,
                                   loss_options=loss_options)  # fmt: skip
    if not (len(train_xs) == len(train_ys) == len(test_xs) == len(test_ys)) or not train_xs:
        raise ValueError(
            "train_xs, train_ys, test_xs, test_ys must be non-empty, equal-length lists"
        )
    for split, xs, ys in (("train", train_xs, train_ys), ("test", test_xs, test_ys)):
        _check_rows(xs, ys, split)
        _check_labels(ys, split, task, num_classes)
    y_dtype = np.int32 if task == "classification" else np.float32
    if num_classes is None:
        num_classes = (
            int(max(np.max(y, initial=0) for y in [*train_ys, *test_ys])) + 1
            if task == "classification"
            else 1
        )
    return FederatedData(
        train=stack_clients([np.asarray(x, np.float32) for x in train_xs], train_ys, y_dtype),
        test=stack_clients([np.asarray(x, np.float32) for x in test_xs], test_ys, y_dtype),
        task=task,
        num_classes=int(num_classes),
        name=name,
        client_names=tuple(client_names),
        info=dict(info or {}),
        metrics=None if metrics is None else tuple(metrics),
        loss_options=dict(loss_options or {}),
    )


def _hosted_from_arrays(train_xs, train_ys, test_xs, test_ys, hosted, *, task, num_classes,
                        **kwargs) -> FederatedData:  # fmt: skip
    """:func:`from_client_arrays` of the clients ``rows`` only (``hosted``)."""
    rows, n_train, n_test, feat, y_shape = hosted
    if num_classes is None:
        raise ValueError("num_classes must be given with hosted (not every label is here)")
    if not len(train_xs) == len(train_ys) == len(test_xs) == len(test_ys) == len(rows):
        raise ValueError(f"hosted: clients {rows} hosted but {len(train_xs)} arrays given")
    for split, xs, ys in (("train", train_xs, train_ys), ("test", test_xs, test_ys)):
        _check_rows(xs, ys, split)
        _check_labels(ys, split, task, num_classes)
    y_dtype = np.int32 if task == "classification" else np.float32

    def stack(xs, ys, counts):
        counts = np.asarray(counts, np.int32)
        for i, xi in zip(rows, xs, strict=True):
            if len(xi) != counts[i]:
                raise ValueError(f"hosted: client {i} has {len(xi)} examples, counts say "
                                 f"{counts[i]}")  # fmt: skip
        part = stack_clients([np.asarray(x, np.float32) for x in xs], ys, y_dtype,
                             max(int(counts.max()), 1), (feat, y_shape))  # fmt: skip
        return part._replace(num_examples=counts)  # every client's count

    kwargs["client_names"] = tuple(kwargs["client_names"])
    kwargs["info"] = dict(kwargs["info"] or {})
    kwargs["metrics"] = None if kwargs["metrics"] is None else tuple(kwargs["metrics"])
    kwargs["loss_options"] = dict(kwargs["loss_options"] or {})
    return FederatedData(train=stack(train_xs, train_ys, n_train),
                         test=stack(test_xs, test_ys, n_test), task=task,
                         num_classes=int(num_classes), hosted=(rows.start, rows.stop),
                         **kwargs)  # fmt: skip
