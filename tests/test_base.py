import jax
import jax.numpy as jnp
import numpy as np

from fljax import EmptyState, chain, identity, stateless


def test_chain_applies_in_order_and_folds_keys():
    seen = []

    def record(i):
        def fn(u, p, key, weights):
            seen.append((i, key))
            return u * 10 + i

        return stateless(fn)

    t = chain(record(1), identity(), record(2))
    key = jax.random.key(3)
    out, state = t.update(jnp.zeros(()), t.init(None), key=key)
    assert float(out) == 12.0  # (0*10+1)*10+2
    assert len(state.inner) == 3 and all(isinstance(s, EmptyState) for s in state.inner)
    k0 = jax.random.key_data(seen[0][1])
    assert np.array_equal(k0, jax.random.key_data(jax.random.fold_in(key, 0)))
    assert np.array_equal(
        jax.random.key_data(seen[1][1]), jax.random.key_data(jax.random.fold_in(key, 2))
    )


def test_chain_state_is_a_valid_scan_carry():
    t = chain(identity(), identity())

    def body(s, _):
        u, s = t.update(jnp.ones(2), s)
        return s, u

    state, outs = jax.lax.scan(body, t.init(jnp.ones(2)), None, length=3)
    assert outs.shape == (3, 2)
