"""Real healthcare federations: Fed-Heart-Disease, Fed-TCGA-BRCA, HAM10000 metadata."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from fljax.data._download import RemoteFile, fetch
from fljax.data._federated import FederatedData, from_client_arrays
from fljax.data._sources import federate, register

# --------------------------------------------------------------------------------------------
# Fed-Heart-Disease (UCI dataset 45), FLamby's preprocessing.

_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/"
HEART_SITES = ("cleveland", "hungarian", "switzerland", "va")
HEART_SITE_NAMES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
HEART_FILES = [
    RemoteFile(
        "processed.cleveland.data",
        _UCI + "processed.cleveland.data",
        "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    ),
    RemoteFile(
        "processed.hungarian.data",
        _UCI + "processed.hungarian.data",
        "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    ),
    RemoteFile(
        "processed.switzerland.data",
        _UCI + "processed.switzerland.data",
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    ),
    RemoteFile(
        "processed.va.data",
        _UCI + "processed.va.data",
        "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
    ),
]
HEART_FEATURES = (
    "age",
    "sex",
    "trestbps",
    "chol",
    "fbs",
    "thalach",
    "exang",
    "oldpeak",
    "cp=2",
    "cp=3",
    "cp=4",
    "restecg=1",
    "restecg=2",
)


def _read_heart(path) -> tuple[np.ndarray, np.ndarray]:
    """Rows without a missing value among the 11 kept columns -> (13 features, num > 0)."""
    rows = []
    with open(path) as f:
        for line in f:
            cells = line.strip().split(",")
            if len(cells) != 14:
                continue
            kept = cells[:10] + cells[13:]  # drop slope, ca, thal (columns 10-12)
            if "?" in kept:
                continue
            rows.append([float(c) for c in kept])
    a = np.asarray(rows)
    age, sex, cp, trestbps, chol, fbs, restecg, thalach, exang, oldpeak, num = a.T
    x = np.stack(
        [
            age,
            sex,
            trestbps,
            chol,
            fbs,
            thalach,
            exang,
            oldpeak,
            cp == 2,
            cp == 3,
            cp == 4,
            restecg == 1,
            restecg == 2,
        ],
        axis=1,
    )
    return x.astype(np.float64), (num > 0).astype(np.int32)


def _flamby_zscore(train: np.ndarray, *others: np.ndarray):
    """FLamby's z-score: training mean and unbiased std, ``(x - mean) / (std + 1e-9)``."""
    mean, std = train.mean(0), train.std(0, ddof=1)
    return [(a - mean) / (std + 1e-9) for a in (train, *others)]


def heart_split(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """ONE hospital file of Fed-Heart-Disease -> ``(x_train, y_train, x_test, y_test)`` before
    standardization: FLamby's per-site ``train_test_split(train_size=0.66, test_size=0.34,
    random_state=43, stratify=label)`` (not stratified where a class has <= 2 rows). What a
    deployed site (:mod:`fljax.deploy`) reads of its own file."""
    from sklearn.model_selection import train_test_split

    x, y = _read_heart(path)
    counts = np.bincount(y, minlength=2)
    stratify = y if counts.min() > 2 else None
    idx_train, idx_test = train_test_split(
        np.arange(len(y)),
        train_size=0.66,
        test_size=0.34,
        random_state=43,
        shuffle=True,
        stratify=stratify,
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


@register("heart_disease")
def heart_disease(
    data_dir: str | os.PathLike | None = None,
    standardize: str = "client",
    metrics: Sequence[str] = ("accuracy", "auroc", "balanced_accuracy"),
    download: bool = True,
) -> FederatedData:
    """Fed-Heart-Disease: 4 real hospitals (Cleveland, Hungary, Switzerland, VA Long Beach),
    binary diagnosis ``num > 0``, FLamby's exact preprocessing.

    Columns slope, ca, thal dropped; rows with a missing value dropped (303 / 261 / 46 / 130);
    per-site ``train_test_split(train_size=0.66, test_size=0.34, random_state=43,
    stratify=label)`` (not stratified where a class has <= 2 rows) giving 199/104, 172/89,
    30/16, 85/45; cp and restecg one-hot with the first level dropped (13 features); z-score
    with each site's own training mean and unbiased std + 1e-9 (``standardize="client"``), or
    with the pooled training statistics (``"global"``, FLamby's pooled baseline), or none.

    Files are read from ``data_dir``, else from the cache, downloaded from the UCI repository
    when missing, and always checked against their published sha256.

    References:
        Janosi, Steinbrunn, Pfisterer, Detrano (1988), UCI Heart Disease; du Terrail et al.
        (2022), "FLamby", NeurIPS Datasets and Benchmarks.
    """
    if standardize not in ("client", "global", "none"):
        raise ValueError(f"standardize={standardize!r} is not one of ('client', 'global', 'none')")
    paths = fetch("heart_disease", HEART_FILES, data_dir, download)
    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for file in HEART_FILES:
        x_train, y_train, x_test, y_test = heart_split(paths[file.name])
        xs_train.append(x_train)
        ys_train.append(y_train)
        xs_test.append(x_test)
        ys_test.append(y_test)
    if standardize == "client":
        pairs = [_flamby_zscore(a, b) for a, b in zip(xs_train, xs_test, strict=True)]
        xs_train, xs_test = [p[0] for p in pairs], [p[1] for p in pairs]
    elif standardize == "global":
        pooled = np.concatenate(xs_train)
        mean, std = pooled.mean(0), pooled.std(0, ddof=1)
        xs_train = [(a - mean) / (std + 1e-9) for a in xs_train]
        xs_test = [(a - mean) / (std + 1e-9) for a in xs_test]
    return from_client_arrays(
        xs_train,
        ys_train,
        xs_test,
        ys_test,
        num_classes=2,
        name="heart_disease",
        client_names=HEART_SITE_NAMES,
        metrics=metrics,
        info=dict(standardize=standardize, features=list(HEART_FEATURES)),
    )


# --------------------------------------------------------------------------------------------
# Fed-TCGA-BRCA (FLamby), survival.

_FLAMBY = "https://raw.githubusercontent.com/owkin/FLamby/main/flamby/datasets/"
TCGA_FILES = [
    RemoteFile(
        "brca.csv",
        _FLAMBY + "fed_tcga_brca/brca.csv",
        "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020",
    ),
    RemoteFile(
        "centers.csv",
        _FLAMBY + "fed_tcga_brca/centers.csv",
        "d610df2dae0203ea229c9579747ed3eb8d28e137c5378f55acc6fe6b4632bb1d",
    ),
    RemoteFile(
        "train_test_split.csv",
        _FLAMBY + "fed_tcga_brca/dataset_creation_scripts/train_test_split.csv",
        "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
    ),
]
TCGA_REGIONS = ("Northeast", "South", "West", "Midwest", "Europe", "Canada")


@register("tcga_brca")
def tcga_brca(
    data_dir: str | os.PathLike | None = None,
    standardize: str = "none",
    metrics: Sequence[str] = ("c_index",),
    cox_normalize: str = "events",
    download: bool = True,
) -> FederatedData:
    """Fed-TCGA-BRCA: breast-cancer overall survival, 6 clients = the geographic regions of
    the tissue source sites (Northeast, South, West, Midwest, Europe, Canada), FLamby's
    train/test split (1,088 patients; the 8 of region "Other" are left out), 39 clinical
    covariates as FLamby gives them (``standardize="none"``, age unscaled) or z-scored with
    pooled training statistics (``"global"``); ``y = (time, event)``.

    The tissue-source-site code (characters 6-7 of the patient id) maps to a region through
    ``centers.csv``; the region agrees with FLamby's ``fold2`` client index, which is checked.
    The Cox loss is averaged over events (``cox_normalize="events"``) or over the batch
    (``"batch"``, as FLamby's ``BaselineLoss``).

    References:
        du Terrail et al. (2022), "FLamby", NeurIPS Datasets and Benchmarks; TCGA BRCA
        clinical data (Liu et al. 2018, Cell, TCGA-CDR).
    """
    if standardize not in ("none", "global"):
        raise ValueError(f"standardize={standardize!r} is not one of ('none', 'global')")
    if cox_normalize not in ("events", "batch"):
        raise ValueError(f"cox_normalize={cox_normalize!r} is not one of ('events', 'batch')")
    paths = fetch("tcga_brca", TCGA_FILES, data_dir, download)
    with open(paths["brca.csv"]) as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    if header[-2:] != ["E", "T"] or len(header) != 42:
        raise ValueError(f"{paths['brca.csv']}: unexpected columns {header[:3]}...{header[-3:]}")
    with open(paths["centers.csv"]) as f:
        region_of = {r["TSS Code"]: r["Region"] for r in csv.DictReader(f)}
    with open(paths["train_test_split.csv"]) as f:
        split = {r["pid"]: r["fold2"] for r in csv.DictReader(f)}
    xs = {(s, c): [] for s in ("train", "test") for c in range(6)}
    ys = {(s, c): [] for s in ("train", "test") for c in range(6)}
    for r in rows:
        pid = r[0]
        if pid not in split:
            continue
        fold, client = split[pid].split("_")
        region = region_of.get(pid.split("-")[1])
        if region != TCGA_REGIONS[int(client)]:
            raise ValueError(f"patient {pid}: region {region!r} disagrees with client {client}")
        xs[fold, int(client)].append([float(v) for v in r[1:40]])
        ys[fold, int(client)].append([float(r[41]), float(r[40])])  # (time, event)
    arrays = {k: np.asarray(v, np.float64) for k, v in xs.items()}
    if standardize == "global":
        pooled = np.concatenate([arrays["train", c] for c in range(6)])
        mean, std = pooled.mean(0), pooled.std(0)
        std = np.where(std > 0, std, 1.0)
        arrays = {k: (v - mean) / std for k, v in arrays.items()}
    return from_client_arrays(
        [arrays["train", c] for c in range(6)],
        [np.asarray(ys["train", c]) for c in range(6)],
        [arrays["test", c] for c in range(6)],
        [np.asarray(ys["test", c]) for c in range(6)],
        task="survival",
        num_classes=1,
        name="tcga_brca",
        client_names=TCGA_REGIONS,
        metrics=metrics,
        info=dict(standardize=standardize, features=header[1:40]),
        loss_options=dict(cox_normalize=cox_normalize),
    )


# --------------------------------------------------------------------------------------------
# HAM10000 metadata: 4 dermatology sites, tabular.

HAM_FILES = [
    RemoteFile(
        "HAM10000_metadata.csv",
        _FLAMBY + "fed_isic2019/HAM10000_metadata",
        "de17ec44cb25ea9c3f6378ba18d69224c740afd62e86ec2edc6a894d6aa663d3",
    ),
]
HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _ham_features(rows: list[dict]) -> tuple[np.ndarray, list, list]:
    """HAM10000 metadata rows as features (age with a missing flag, one-hot sex and body
    localization), and the sexes and localizations in column order."""
    sexes = sorted({r["sex"] for r in rows})
    places = sorted({r["localization"] for r in rows})
    ages = np.array([float(r["age"]) if r["age"] else np.nan for r in rows])
    missing = np.isnan(ages)
    x = np.concatenate(
        [
            np.where(missing, 0.0, ages)[:, None],
            missing[:, None].astype(float),
            np.array([[r["sex"] == s for s in sexes] for r in rows], float),
            np.array([[r["localization"] == p for p in places] for r in rows], float),
        ],
        axis=1,
    )
    return x, sexes, places


def _zscore_age(fed: FederatedData) -> None:
    """Age (column 0) z-scored in place with pooled training statistics; missing ages (flag in
    column 1) imputed with the mean, i.e. 0."""
    tr = fed.train
    real = tr.mask & (tr.x[..., 1] == 0)
    mean, std = tr.x[..., 0][real].mean(), tr.x[..., 0][real].std()
    for split in (fed.train, fed.test):
        age, miss = split.x[..., 0], split.x[..., 1] > 0
        split.x[..., 0] = np.where(split.mask, np.where(miss, 0.0, (age - mean) / std), 0.0)


@register("ham10000")
def ham10000(
    data_dir: str | os.PathLike | None = None,
    target: str = "melanoma",
    test_fraction: float = 0.2,
    min_examples: int = 10,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    download: bool = True,
) -> FederatedData:
    """HAM10000 metadata as a 4-site federation (vidir_molemax, vidir_modern, rosendahl,
    vienna_dias): predict melanoma (``target="melanoma"``, binary) or the 7-class diagnosis
    (``"dx"``) from age (z-scored with pooled training statistics; missing age imputed with
    the training mean plus a missing-age indicator), sex and body localization (one-hot).
    Strong label skew across sites. Each site is split into train/test at random.

    References:
        Tschandl, Rosendahl, Kittler (2018), "The HAM10000 dataset", Sci. Data 5, 180161.
    """
    if target not in ("melanoma", "dx"):
        raise ValueError(f"target={target!r} is not one of ('melanoma', 'dx')")
    paths = fetch("ham10000", HAM_FILES, data_dir, download)
    with open(paths["HAM10000_metadata.csv"]) as f:
        rows = list(csv.DictReader(f))
    x, sexes, places = _ham_features(rows)
    dx = np.array([HAM_DX.index(r["dx"]) for r in rows], np.int32)
    y = (dx == HAM_DX.index("mel")).astype(np.int32) if target == "melanoma" else dx
    sites = np.array([r["dataset"] for r in rows])
    fed = federate(
        x,
        y,
        num_clients=len(set(sites)),
        partition="natural",
        sites=sites,
        seed=seed,
        test_fraction=test_fraction,
        min_examples=min_examples,
        standardize="none",
        num_classes=2 if target == "melanoma" else len(HAM_DX),
        name=f"ham10000_{target}",
    )
    _zscore_age(fed)
    if metrics is None:
        metrics = (
            ("accuracy", "auroc", "auprc", "balanced_accuracy")
            if target == "melanoma"
            else ("accuracy", "balanced_accuracy")
        )
    return FederatedData(
        train=fed.train,
        test=fed.test,
        task="classification",
        num_classes=fed.num_classes,
        name=fed.name,
        client_names=tuple(np.unique(sites)),
        metrics=tuple(metrics),
        info=dict(
            fed.info,
            target=target,
            features=[
                "age",
                "age_missing",
                *[f"sex={s}" for s in sexes],
                *[f"loc={p}" for p in places],
            ],
        ),
    )
