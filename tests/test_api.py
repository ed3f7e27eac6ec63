"""The public API contract: exported names exist, registries list and reject names clearly."""

import pytest

import fljax


def test_every_exported_name_exists():
    for name in fljax.__all__:
        assert hasattr(fljax, name), name
    assert isinstance(fljax.__version__, str)


@pytest.mark.parametrize(
    "registry, valid",
    [(fljax.data, "breast_cancer"), (fljax.models, "mlp"), (fljax.algorithms, "fedavg")],
)
def test_registry_unknown_name_lists_valid_names(registry, valid):
    assert valid in registry.names()
    with pytest.raises(ValueError, match=valid):
        registry.get("no_such_thing")


@pytest.mark.parametrize(
    "registry, name, kwargs",
    [
        (fljax.data, "breast_cancer", {"alpah": 0.1}),
        (fljax.models, "mlp", {"num_classes": 2, "hiden": (3,)}),
        (fljax.algorithms, "fedavg", {"lr": 0.1}),
    ],
)
def test_registry_unknown_argument_is_named(registry, name, kwargs):
    bad = next(iter(kwargs)) if name != "mlp" else "hiden"
    with pytest.raises(ValueError, match=bad):
        registry.get(name, **kwargs)
