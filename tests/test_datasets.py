"""Healthcare sources: exact sizes, checksums, natural federations, TFDS adapter, describe."""

import shutil

import jax
import numpy as np
import pytest

import fljax
from fljax.data import ChecksumError


@pytest.fixture(scope="module")
def heart(shared_data):
    return fljax.data.load("heart_disease", data_dir=shared_data / "heart_disease")


def test_heart_disease_has_flambys_four_sites_and_splits(heart):
    assert heart.client_names == ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
    assert heart.num_examples.tolist() == [199, 172, 30, 85]
    assert heart.test.num_examples.tolist() == [104, 89, 16, 45]
    assert heart.feature_shape == (13,)
    # z-scored with each site's own training statistics (unbiased std)
    for c in range(4):
        x = heart.train.x[c, : heart.num_examples[c]]
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
        sd = x.std(0, ddof=1)
        np.testing.assert_allclose(sd[sd > 0], 1, atol=1e-4)
    # labels: num > 0, FLamby's positives 139 / 98 / 45 / 101 over train + test
    pos = [
        int(
            heart.train.y[c, : heart.num_examples[c]].sum()
            + heart.test.y[c, : heart.test.num_examples[c]].sum()
        )
        for c in range(4)
    ]
    assert pos == [139, 98, 45, 101]


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_corrupt_file_fails_with_checksum_error_naming_it(shared_data, tmp_path, damage):
    for f in (shared_data / "heart_disease").glob("processed.*"):
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "processed.va.data"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else data.replace(b"1", b"2"))
    with pytest.raises(ChecksumError, match="processed.va.data"):
        fljax.data.load("heart_disease", data_dir=tmp_path)


def test_missing_file_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="processed.cleveland.data"):
        fljax.data.load("heart_disease", data_dir=tmp_path, download=False)


def test_tcga_brca_regions_and_split(shared_data):
    fed = fljax.data.load("tcga_brca", data_dir=shared_data / "tcga_brca")
    assert fed.task == "survival" and fed.feature_shape == (39,)
    assert fed.client_names == ("Northeast", "South", "West", "Midwest", "Europe", "Canada")
    total = fed.num_examples + fed.test.num_examples
    assert total.tolist() == [311, 196, 206, 162, 162, 51]
    assert fed.test.num_examples.tolist() == [63, 40, 42, 33, 33, 11]
    y = fed.train.y[fed.train.mask]
    assert set(np.unique(y[:, 1])) == {0.0, 1.0} and (y[:, 0] >= 0).all()


def test_cox_model_trains_on_tcga(shared_data):
    fed = fljax.data.load("tcga_brca", data_dir=shared_data / "tcga_brca", standardize="global")
    model = fljax.models.get("logistic", num_classes=1)
    algo = fljax.algorithms.get("fedavg", client_lr=0.01, local_epochs=1, batch_size=16)
    res = fljax.simulate(
        algo, model, fed, rounds=10, clients_per_round=6, eval_every=10, eval_train=True
    )
    first, last = res.history[0]["metrics"], res.history[-1]["metrics"]
    assert last["train_loss"] < first["train_loss"]  # the Cox partial likelihood improves
    assert last["train_c_index"] > 0.7 and last["test_c_index"] > 0.6


def test_ham10000_natural_sites_with_label_skew(shared_data):
    fed = fljax.data.load("ham10000", data_dir=shared_data / "ham10000_metadata")
    assert fed.num_clients == 4
    assert int(fed.num_examples.sum() + fed.test.num_examples.sum()) == 10015
    info = fljax.data.describe(fed)
    rates = [r["labels"][1] / r["train"] for r in info["clients"]]
    assert max(rates) > 5 * min(rates)  # melanoma prevalence differs strongly between sites
    dx = fljax.data.load("ham10000", data_dir=shared_data / "ham10000_metadata", target="dx")
    assert dx.num_classes == 7


def test_synthetic_hospitals_shape_and_heterogeneity():
    fed = fljax.data.load(
        "synthetic_hospitals",
        num_clients=300,
        prevalence=0.02,
        label_noise=0.0,
        prevalence_sd=0.3,
        seed=3,
    )
    assert fed.num_clients == 300 and fed.num_examples.min() >= 10
    info = fed.info
    assert len(info["site_prevalence"]) == 300
    pos = np.array([r["labels"][1] for r in fljax.data.describe(fed)["clients"]])
    assert pos.min() >= 0 and np.median(pos) <= 6  # a rare disease: a handful per site
    sizes = fed.num_examples
    assert sizes.std() / sizes.mean() > 0.5  # size skew
    means = np.array([fed.train.x[c, : sizes[c]].mean(0) for c in range(300)])
    assert means.std(0).mean() > 0.3  # covariate shift
    again = fljax.data.load(
        "synthetic_hospitals",
        num_clients=300,
        prevalence=0.02,
        label_noise=0.0,
        prevalence_sd=0.3,
        seed=3,
    )
    np.testing.assert_array_equal(again.train.x, fed.train.x)


def test_diabetes_regression_trains():
    fed = fljax.data.load("diabetes", num_clients=4)
    with pytest.raises(ValueError, match="classification"):
        fljax.data.load("diabetes", partition="dirichlet")
    model = fljax.models.get("mlp", num_classes=1, hidden=(16,))
    algo = fljax.algorithms.get("fedavg", client_lr=0.05, local_epochs=2, batch_size=16)
    res = fljax.simulate(algo, model, fed, rounds=10, clients_per_round=4, eval_every=10)
    assert res.final_metrics["test_mse"] < 0.7 * res.history[0]["metrics"]["test_mse"]


@pytest.mark.parametrize("name", ["pneumonia_mnist", "colorectal_histology"])
def test_tfds_adapter_with_mock_data(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=120):
        fed = fljax.data.load(
            name,
            num_clients=3,
            partition="iid",
            min_examples=5,
            image_size=[16, 16] if name == "colorectal_histology" else None,
        )
    assert fed.num_clients == 3 and fed.name == name
    assert fed.train.x.ndim >= 4 and 0.0 <= fed.train.x.min() and fed.train.x.max() <= 1.0
    assert int(fed.num_examples.sum() + fed.test.num_examples.sum()) == 120
    model = fljax.models.get("cnn", num_classes=fed.num_classes, features=(4,), dense=8)
    algo = fljax.algorithms.get("fedavg", client_lr=0.01, local_epochs=1, batch_size=8)
    res = fljax.simulate(algo, model, fed, rounds=1, clients_per_round=3)
    assert np.isfinite(res.final_metrics["test_loss"])


def test_unknown_tfds_name_is_a_clear_error():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="no_such_ds"):
        fljax.data.load("tfds", tfds_name="no_such_ds")


def test_describe_and_plot(heart):
    info = fljax.data.describe(heart)
    assert [r["train"] for r in info["clients"]] == [199, 172, 30, 85]
    assert 0 <= info["label_skew"] <= 1
    import matplotlib

    matplotlib.use("Agg")
    fig = fljax.data.plot_federation(heart)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "training examples (count)" and ax.get_legend() is not None
    from fljax._plot import style_problems

    assert style_problems(fig) == []


def test_a_mistyped_data_dir_is_refused_and_not_created(tmp_path):
    wrong = tmp_path / "heart_disese"
    with pytest.raises(FileNotFoundError, match="data_dir=.*heart_disese.*is not a folder"):
        fljax.data.load("heart_disease", data_dir=wrong)
    assert not wrong.exists()


def test_tcga_cox_normalize_reaches_the_training_loss(shared_data):
    """cox_normalize="batch" (FLamby's BaselineLoss: the mean over the batch) divides the
    Cox loss, hence one full-batch SGD step, by n instead of the number of events."""
    import dataclasses

    steps = {}
    for normalize in ("events", "batch"):
        fed = fljax.data.load(
            "tcga_brca", data_dir=shared_data / "tcga_brca", cox_normalize=normalize
        )
        assert fed.loss_options == {"cox_normalize": normalize}
        n = np.where(np.arange(6) == 5, fed.train.num_examples, 0).astype(np.int32)
        one = fljax.data.drop_empty_clients(
            dataclasses.replace(fed, train=fed.train._replace(num_examples=n))
        )  # Canada only
        model = fljax.models.get("logistic", num_classes=1)
        algo = fljax.algorithms.get("fedavg", client_lr=0.01, local_steps=1, local_epochs=None,
                                    batch_size=None)  # fmt: skip
        params0 = model.init(jax.random.key(0), fed.sample())
        res = fljax.simulate(algo, model, one, rounds=1, clients_per_round=1, params=params0)
        steps[normalize] = res.params["Dense_0"]["kernel"] - params0["Dense_0"]["kernel"]
    n5 = int(fed.train.num_examples[5])
    events = int(fed.train.y[5, :n5, 1].sum())
    np.testing.assert_allclose(steps["batch"], steps["events"] * events / n5, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="cox_normalize='mean' is not one of"):
        fljax.data.load("tcga_brca", data_dir=shared_data / "tcga_brca", cox_normalize="mean")
