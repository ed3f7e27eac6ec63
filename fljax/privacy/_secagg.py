"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020), simulated with
exact ring arithmetic.

Each client encodes its (weighted, range-clipped) update as fixed-point integers in the ring
``Z_(2^b)``, adds a pairwise mask ``+-PRG(s_ij)`` for every neighbour ``j`` in the
communication graph (all other clients in SecAgg; a random Harary graph of degree ``k`` in
SecAgg+) and, optionally, a self mask ``PRG(b_i)``. The server sums the masked vectors of the
clients that did not drop out, removes the survivors' self masks and the pairwise masks shared
with dropped clients (what the secret-sharing recovery round makes possible; simulated and its
messages counted) and decodes the sum. Pairwise masks between survivors cancel exactly.

This is a functional simulation, not cryptography: ``jax.random`` (threefry) stands in for the
PRG and no key agreement or secret sharing actually runs. It reproduces what the protocol
computes (the exact decoded sum, bit for bit), what it costs (bytes, PRG expansions, recovery
messages) and what a single masked message looks like (uniform on the ring); it does not
protect anything.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fljax._base import Transform

GRAPHS = ("complete", "harary")
KEY_BYTES = 32  # one public key (X25519); two per client are advertised
SHARE_BYTES = 48  # one encrypted Shamir share of a 32-byte secret, with index and tag


class SecAgg(NamedTuple):
    """A secure-aggregation configuration (see :func:`secagg` and :func:`secagg_plus`).

    Attributes:
        name: ``"secagg"`` or ``"secagg_plus"``.
        bits: ``b``, the ring is ``Z_(2^b)`` (``1 < b <= 32``).
        clip_range: ``R``: every encoded coordinate is clipped to ``[-R, R]``.
        graph: ``"complete"`` (all pairs) or ``"harary"`` (SecAgg+'s random k-regular graph).
        degree: neighbours per client in the Harary graph (even); ``None``: the smallest even
            number ``>= 2 ceil(log2 K)``.
        self_masks: add and later remove a self mask ``PRG(b_i)`` (protects a late client whose
            pairwise masks were removed).
        hparams: the arguments it was built with.
    """

    name: str
    bits: int
    clip_range: float
    graph: str
    degree: int | None
    self_masks: bool
    hparams: dict


def _check(bits, clip_range):
    if not isinstance(bits, int) or not 1 < bits <= 32:
        raise ValueError(f"bits must be an integer in [2, 32], got {bits!r}")
    if not (clip_range > 0 and math.isfinite(clip_range)):
        raise ValueError(f"clip_range must be a finite number > 0, got {clip_range}")


def secagg(bits: int = 32, clip_range: float = 1.0, self_masks: bool = True) -> SecAgg:
    """SecAgg (Bonawitz et al. 2017): pairwise masks between all pairs of selected clients."""
    _check(bits, clip_range)
    hp = dict(bits=bits, clip_range=clip_range, self_masks=self_masks)
    return SecAgg("secagg", bits, float(clip_range), "complete", None, bool(self_masks), hp)


def secagg_plus(
    bits: int = 32, clip_range: float = 1.0, degree: int | None = None, self_masks: bool = True
) -> SecAgg:
    """SecAgg+ (Bell et al. 2020): pairwise masks only along a fresh random Harary graph of
    degree ``k = O(log K)`` each round, so client cost grows with ``log K`` instead of ``K``."""
    _check(bits, clip_range)
    if degree is not None and (degree < 2 or degree % 2):
        raise ValueError(f"degree must be an even integer >= 2, got {degree}")
    hp = dict(bits=bits, clip_range=clip_range, degree=degree, self_masks=self_masks)
    return SecAgg("secagg_plus", bits, float(clip_range), "harary", degree, bool(self_masks), hp)


def graph_degree(secagg: SecAgg, num_clients: int) -> int:
    """Neighbours of each client: ``K - 1`` (complete) or the Harary degree, capped at K - 1."""
    if secagg.graph == "complete":
        return num_clients - 1
    k = secagg.degree or 2 * math.ceil(math.log2(max(num_clients, 2)))
    k += k % 2
    return min(k, num_clients - 1)


def ring_levels(bits: int, num_clients: int) -> int:
    """Integer levels per client, ``floor((2^(b-1) - 1) / K)``: the sum of ``K`` values in
    ``[-levels, levels]`` never leaves ``(-2^(b-1), 2^(b-1))``, so it cannot overflow."""
    levels = (2 ** (bits - 1) - 1) // num_clients
    if levels < 1:
        raise ValueError(
            f"bits={bits} cannot hold the sum of {num_clients} clients without overflow "
            f"(needs bits > log2(clients) + 1 = {math.log2(num_clients) + 1:.1f}); raise bits "
            "or lower clients_per_round"
        )
    return levels


def _mask(bits: int) -> jax.Array:
    return jnp.uint32(0xFFFFFFFF if bits == 32 else (1 << bits) - 1)


def encode(x: jax.Array, scale: jax.Array, levels: int, bits: int, key: jax.Array) -> jax.Array:
    """Fixed-point encoding into ``Z_(2^b)`` (uint32): ``clip(floor(x * scale + u))``,
    ``u ~ U[0, 1)`` (unbiased stochastic rounding), two's complement modulo ``2^b``."""
    u = jax.random.uniform(key, x.shape)
    # Clip in float32 to stay inside int32, then again in int32: at b = 32, ``levels`` is not
    # a float32 (715827882 rounds to 715827904), and K values at the edge would overflow.
    q = jnp.clip(jnp.floor(x * scale + u), -levels, levels).astype(jnp.int32)
    q = jnp.clip(q, -levels, levels)
    return jax.lax.bitcast_convert_type(q, jnp.uint32) & _mask(bits)


def decode(s: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
    """The signed value of a ring element ``s`` (a sum of encodings), divided by ``scale``."""
    if bits == 32:
        signed = jax.lax.bitcast_convert_type(s, jnp.int32)
    else:
        v = s.astype(jnp.int32)
        signed = jnp.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return signed.astype(jnp.float32) / scale


def neighbours(key: jax.Array, num_clients: int, degree: int, graph: str) -> jax.Array:
    """``nbr[K, degree]``: cohort slots adjacent to each slot. Complete: every other slot.
    Harary ``H(K, k)``: slots on a random ring, each linked to ``k / 2`` on either side; a
    degree of ``K - 1`` (odd when ``K`` is even) is the complete graph."""
    k = num_clients
    if graph == "complete" or degree >= k - 1:
        offsets = jnp.arange(1, k)
        return (jnp.arange(k)[:, None] + offsets[None, :]) % k
    half = degree // 2
    offsets = jnp.concatenate([jnp.arange(1, half + 1), -jnp.arange(1, half + 1)])
    perm = jax.random.permutation(key, k)  # position -> slot
    pos = jnp.argsort(perm)  # slot -> position
    return perm[(pos[:, None] + offsets[None, :]) % k]


class SecAggStats(NamedTuple):
    """Per-round protocol counts (int32 scalars), reported in ``history`` as running totals."""

    prg_client: jax.Array  # PRG expansions by all selected clients (pairwise + self masks)
    prg_server: jax.Array  # PRG expansions by the server (survivors' self masks, recovered pairs)
    recovered_pairs: jax.Array  # pairwise masks of dropped clients the server had to remove
    recovery_messages: jax.Array  # shares sent in the unmasking round
    survivors: jax.Array  # clients whose masked vector was summed
    dropped: jax.Array  # selected clients that masked but did not send
    clipped: jax.Array  # coordinates of the summed vectors outside [-R, R], clipped to it


def secure_sum(
    values: jax.Array,
    included: jax.Array,
    client_ids: jax.Array,
    key: jax.Array,
    secagg: SecAgg,
    ranges: jax.Array,
    active: jax.Array | None = None,
) -> tuple[jax.Array, SecAggStats]:
    """Secure sum of ``values[K, d]`` over the clients with ``included[K]``: the decoded
    ring sum of their fixed-point encodings (``ranges[d]``: clip range per coordinate) and
    the round's :class:`SecAggStats` (``clipped``: how many coordinates of the summed vectors
    fell outside their range and were clipped, biasing the sum). Clients not ``included``
    were selected and masked their vector but dropped out before sending it.
    """
    client_ids = jnp.asarray(client_ids)
    k_count, d = values.shape
    levels = ring_levels(secagg.bits, k_count)
    scale = levels / ranges
    k_enc, k_protocol = jax.random.split(key)
    enc = jax.vmap(
        lambda x, i: encode(x, scale, levels, secagg.bits, jax.random.fold_in(k_enc, i))
    )(values, client_ids)
    ring_sum, _, stats = secure_ring_sum(enc, included, client_ids, k_protocol, secagg, active)
    live = included if active is None else included & active
    outside = (jnp.abs(values) > ranges[None, :]) & live[:, None]
    return decode(ring_sum, scale, secagg.bits), stats._replace(
        clipped=jnp.sum(outside, dtype=jnp.int32)
    )


def secure_ring_sum(
    enc: jax.Array,
    included: jax.Array,
    client_ids: jax.Array,
    key: jax.Array,
    secagg: SecAgg,
    active: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, SecAggStats]:
    """The protocol on ring elements ``enc[K, d]`` (uint32 in ``[0, 2^b)``).

    ``active[K]`` marks the slots that hold a selected client (default: all); inactive slots
    (padding of a Poisson cohort) take no part: no masks are shared with them.

    Returns the server's unmasked sum over the ``included`` clients (``[d]``, equal to
    ``sum(enc[included]) mod 2^b``), every client's masked message ``[K, d]`` (what the
    server would receive) and the :class:`SecAggStats`.
    """
    enc, included, client_ids = jnp.asarray(enc), jnp.asarray(included), jnp.asarray(client_ids)
    k_count, d = enc.shape
    bits = secagg.bits
    degree = graph_degree(secagg, k_count)
    k_round, k_graph = jax.random.split(key)
    nbr = neighbours(k_graph, k_count, degree, secagg.graph)
    m = _mask(bits)
    if active is None:
        active = jnp.ones((k_count,), bool)
    included = included & active
    edge = active[nbr] & active[:, None]  # [K, degree]

    def prg(seed):
        return jax.random.bits(seed, (d,), jnp.uint32) & m

    def pair_mask(i, j):  # PRG(s_ij), s_ij shared by the pair (seeded by both client ids)
        a, b = client_ids[i], client_ids[j]
        lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
        seed = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(k_round, 0), lo), hi)
        return prg(seed), a < b

    def self_mask(i):
        return prg(jax.random.fold_in(jax.random.fold_in(k_round, 1), client_ids[i]))

    def masked(i):  # y_i = enc_i + PRG(b_i) + sum_j (+-) PRG(s_ij)  (mod 2^b)
        acc = enc[i] + self_mask(i) if secagg.self_masks else enc[i]

        def body(t, acc):
            mask, plus = pair_mask(i, nbr[i, t])
            return jnp.where(edge[i, t], jnp.where(plus, acc + mask, acc - mask) & m, acc)

        return jax.lax.fori_loop(0, degree, body, acc & m)

    sent = jax.vmap(masked)(jnp.arange(k_count))
    total = jnp.sum(sent * included.astype(jnp.uint32)[:, None], axis=0, dtype=jnp.uint32)

    def correction(i):  # survivor i's self mask and its masks shared with dropped neighbours
        acc = self_mask(i) if secagg.self_masks else jnp.zeros((d,), jnp.uint32)

        def body(t, acc):
            j = nbr[i, t]
            mask, plus = pair_mask(i, j)
            fixed = jnp.where(plus, acc + mask, acc - mask) & m
            return jnp.where(included[j] | ~edge[i, t], acc, fixed)

        acc = jax.lax.fori_loop(0, degree, body, acc)
        return jnp.where(included[i], acc, jnp.zeros_like(acc))

    fix = jnp.sum(jax.vmap(correction)(jnp.arange(k_count)), axis=0, dtype=jnp.uint32)
    ring_sum = (total - fix) & m
    return ring_sum, sent, _protocol_stats(secagg, nbr, edge, included, active)


def _protocol_stats(secagg: SecAgg, nbr, edge, included, active) -> SecAggStats:
    """The round's counts: PRG expansions by clients and server, recovered pairwise masks,
    recovery messages, survivors and dropouts (Bonawitz et al. 2017, Sec. 4 costs)."""
    dropped_nbrs = jnp.sum(~included[nbr] & edge, axis=1) * included  # per survivor
    live_nbrs = jnp.sum(edge, axis=1)
    survivors = jnp.sum(included).astype(jnp.int32)
    recovered = jnp.sum(dropped_nbrs).astype(jnp.int32)
    # Unmasking round: a survivor sends one share per neighbour: of b_j (survivor) or of
    # s_j^SK (dropped); without self masks only the dropped neighbours' shares are needed.
    shares = dropped_nbrs + (live_nbrs - dropped_nbrs) * int(secagg.self_masks)
    return SecAggStats(
        prg_client=jnp.sum((live_nbrs + int(secagg.self_masks)) * active).astype(jnp.int32),
        prg_server=survivors * int(secagg.self_masks) + recovered,
        recovered_pairs=recovered,
        recovery_messages=jnp.sum(shares * included).astype(jnp.int32),
        survivors=survivors,
        dropped=jnp.sum(active).astype(jnp.int32) - survivors,
        clipped=jnp.zeros((), jnp.int32),
    )


class SecureMeanState(NamedTuple):
    """State of :func:`secure_aggregator`: the inner aggregator's and the last round's counts."""

    inner: Any
    stats: SecAggStats


def _zero_stats() -> SecAggStats:
    z = jnp.zeros((), jnp.int32)
    return SecAggStats(z, z, z, z, z, z, z)


def _flatten_rows(rows):
    """``rows`` (a pytree with a leading client axis) as ``[K, d]`` and the map back to one
    row's pytree."""
    flat = jax.vmap(lambda r: ravel_pytree(r)[0])(rows)
    return flat, ravel_pytree(jax.tree.map(lambda a: a[0], rows))[1]


def secure_aggregator(secagg: SecAgg, weight_bound: float, inner=None, linear=None,
                      max_steps: int = 1):  # fmt: skip
    r"""The aggregator that replaces the server's plain sum with :func:`secure_sum`.

    With ``linear`` (a :class:`fljax.Linear`: the weighted mean, FedNova, ...) each client
    sends its rows built with weights :math:`\tilde w_k = w_k / W` (``W = weight_bound``, a
    public bound on the weights), each coordinate clipped to the bound the aggregator states
    (``clip_range`` for update coordinates, 1 for weights, ``max_steps`` for step counts), and
    the server finishes the aggregate from the secure sums (for the weighted mean
    :math:`[\tilde w_k \Delta_k, \tilde w_k]`, divided). With ``inner`` (a
    :class:`fljax.privacy.ClippedSum`: DP-FedAvg's clip and finish) the clients' clipped
    updates are summed securely and the server finishes the DP step on that sum.
    """
    from fljax.privacy._mechanisms import SUM_KEY_FOLD

    if (inner is None) == (linear is None):
        raise ValueError("secure_aggregator needs exactly one of inner (DP) and linear")

    def init(params):
        return SecureMeanState(() if inner is None else inner.init(params), _zero_stats())

    def secure_rows(rows, included, client_ids, key, active, bounds):
        flat, unravel = _flatten_rows(rows)
        row0 = jax.tree.map(lambda a: a[0], rows)
        ranges = ravel_pytree(tuple(
            jax.tree.map(lambda a, b=b: jnp.full(jnp.shape(a), b, jnp.float32), part)
            for b, part in zip(bounds, row0, strict=True)
        ))[0]  # fmt: skip
        out, stats = secure_sum(flat, included, client_ids, key, secagg, ranges, active)
        return unravel(out), stats

    def update(
        updates, state, params=None, *, key=None, weights=None, client_ids=None, active=None,
        num_steps=None, **extra,
    ):  # fmt: skip
        del params, extra
        if client_ids is None or key is None or weights is None:
            raise ValueError("secure aggregation needs client_ids, weights and a key")
        included = weights > 0
        if inner is not None:
            clipped, inc, norms = inner.clip(updates, state.inner, weights)
            total, stats = secure_rows((clipped,), inc, client_ids,
                                       jax.random.fold_in(key, SUM_KEY_FOLD), active,
                                       (secagg.clip_range,))  # fmt: skip
            out, inner_state = inner.finish(total[0], state.inner, key, inc, norms)
            return out, SecureMeanState(inner_state, stats)
        w = jnp.where(included, weights / weight_bound, 0.0)
        rows = linear.rows(updates, w, num_steps)
        sums, stats = secure_rows(rows, included, client_ids, key, active,
                                  linear.bounds(secagg.clip_range, max_steps))  # fmt: skip
        like = jax.tree.map(lambda a: a[0], updates)
        return linear.finish(sums, like), SecureMeanState((), stats)

    return Transform(init, update)


def message_bytes(secagg: SecAgg, num_params: int, num_clients: int) -> dict[str, int]:
    """Bytes one client sends in one round, by protocol step (Bonawitz et al. 2017, Fig. 4):
    two public keys, ``2 k`` encrypted shares, the masked vector of ``d + 1`` ring elements,
    and in the unmasking round at most ``k`` shares."""
    k = graph_degree(secagg, num_clients)
    return {
        "advertise_keys": 2 * KEY_BYTES,
        "share_keys": 2 * k * SHARE_BYTES,
        "masked_input": math.ceil((num_params + 1) * secagg.bits / 8),
        "unmasking_max": k * SHARE_BYTES,
    }
