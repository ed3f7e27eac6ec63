"""TensorFlow Datasets image datasets as federations, through one adapter."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fljax.data._federated import FederatedData
from fljax.data._sources import federate, register

MEDICAL_TFDS = ("pneumonia_mnist", "colorectal_histology", "malaria", "patch_camelyon")


def _as_arrays(ds, image_key, label_key, image_size, max_examples):
    import tensorflow as tf

    xs, ys = [], []
    for i, ex in enumerate(ds):
        if max_examples is not None and i >= max_examples:
            break
        img = ex[image_key]
        if image_size is not None:
            img = tf.image.resize(img, image_size)
        xs.append(np.asarray(img, np.float32))
        ys.append(int(ex[label_key]))
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ValueError(
            f"images have different shapes {sorted(shapes)[:3]}...; set image_size=[H, W]"
        )
    return np.stack(xs), np.asarray(ys, np.int32)


def tfds_images(
    tfds_name: str,
    num_clients: int = 10,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    size_distribution: str = "lognormal",
    size_sigma: float = 1.0,
    split: str = "train",
    image_key: str = "image",
    label_key: str = "label",
    image_size: Sequence[int] | None = None,
    max_examples: int | None = None,
    test_fraction: float = 0.2,
    min_examples: int = 10,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
) -> FederatedData:
    """Any TFDS image-classification dataset, loaded with tensorflow-datasets, scaled to
    [0, 1] (and resized to ``image_size`` if given), partitioned into ``num_clients`` and split
    per client into train/test like the other pooled sources.

    Needs the ``tfds`` extra (``pip install fljax[tfds]``).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - the dev extra installs it
        raise ImportError("TFDS datasets need: pip install 'fljax[tfds]'") from err
    if tfds_name not in tfds.list_builders():
        raise ValueError(f"unknown TFDS dataset {tfds_name!r}; see tfds.list_builders()")
    ds = tfds.load(
        tfds_name, split=split, data_dir=data_dir, download=download, shuffle_files=False
    )
    x, y = _as_arrays(
        tfds.as_numpy(ds),
        image_key,
        label_key,
        None if image_size is None else tuple(image_size),
        max_examples,
    )
    if x.max() > 1.0:
        x = x / 255.0
    num_classes = int(max(y.max() + 1, 2))
    if metrics is None:
        metrics = ("accuracy", "auroc") if num_classes == 2 else ("accuracy",)
    return federate(
        x,
        y,
        num_clients=num_clients,
        partition=partition,
        seed=seed,
        test_fraction=test_fraction,
        min_examples=min_examples,
        standardize="none",
        alpha=alpha,
        classes_per_client=classes_per_client,
        size_distribution=size_distribution,
        size_sigma=size_sigma,
        num_classes=num_classes,
        name=tfds_name,
        metrics=metrics,
    )


register("tfds")(tfds_images)


def _alias(name: str):
    def build(**kwargs) -> FederatedData:
        return tfds_images(name, **kwargs)

    build.__doc__ = f"TFDS ``{name}`` through :func:`tfds_images`."
    build.__signature__ = _signature_without_name()
    return build


def _signature_without_name():
    import inspect

    sig = inspect.signature(tfds_images)
    return sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "tfds_name"])


for _name in MEDICAL_TFDS:
    register(_name)(_alias(_name))
