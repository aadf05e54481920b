"""Losses of a batch spread over devices, for :mod:`lovasz.jax`.

Two settings, one idea: a (set, class) row's loss needs all of the row's pixels on one
device, and nothing more; rows are independent.

* ``axis_name=`` (inside ``shard_map`` or ``pmap``; each device holds its images): in batch
  mode the class rows of the union of every device's pixels are formed by one
  ``all_to_all``, device ``d`` receiving every image's pixels of its own
  ``ceil(K / n)`` classes; the ``K`` row losses (and which classes are present) are then
  all-gathered, so every device holds the exact loss of the global batch. Per image, each
  device's losses are its own and only their sum is all-gathered, for the global mean.
  The gathers of the losses are *invariant* (``all_gather(..., to='invarying')``): their
  transpose hands each device its own part of the cotangent, so each device's gradient is
  its slice of the single-device gradient, under ``shard_map`` (gradient taken inside or
  outside) and under ``pmap`` (gradient taken inside).
* plain ``jax.jit`` with sharded inputs: the rows are split over the mesh of the inputs by
  an internal ``shard_map``, so each device sorts its own rows and the CPU kernel's
  callback runs on every device on its shard (a callback left to the partitioner runs on
  device 0, which gathers every row there). Per image the rows are the images' class
  rows, already where the batch is; in batch mode the partitioner moves the class rows to
  their devices (an all-to-all), as above.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lovasz._codes import IGNORED

AxisName = Any  # a hashable name, or a tuple of names, as jax.lax collectives take it

# all_gather(to="invarying") from jax 0.7 or so; all_gather_invariant before it
_GATHER_TO = "to" in inspect.signature(jax.lax.all_gather).parameters


def _varying_axes(x: jax.Array) -> frozenset:
    """The manual axes along which ``x`` varies, in the types of ``shard_map`` (``check_vma``)."""
    aval = jax.typeof(x) if hasattr(jax, "typeof") else None
    varying = getattr(aval, "vma", None)
    if varying is None:
        varying = getattr(getattr(aval, "mat", None), "varying", frozenset())
    return frozenset(varying or ())


def vary_like(outputs: Any, *inputs: jax.Array) -> Any:
    """``outputs`` of a callback typed as varying along every manual axis its inputs vary along: a
    callback's results carry no such type, and ``custom_jvp`` and ``shard_map`` check it. Nothing
    to do outside ``shard_map`` (and under ``pmap``, which checks no types)."""
    axes = frozenset().union(*map(_varying_axes, inputs))
    if not axes:
        return outputs

    def cast(x: jax.Array) -> jax.Array:
        missing = tuple(sorted(axes - _varying_axes(x), key=str))
        if not missing:
            return x
        if hasattr(jax.lax, "pcast"):
            return jax.lax.pcast(x, missing, to="varying")
        return jax.lax.pvary(x, missing)  # type: ignore[attr-defined]  # jax before pcast

    return jax.tree.map(cast, outputs)


def _gather_invariant(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Every device's ``x`` along axis 0, the same on all: its transpose hands each device the
    cotangent of its own part (where ``all_gather``'s sums every device's)."""
    if _GATHER_TO:
        return jax.lax.all_gather(x, axis_name, tiled=True, to="invarying")
    return jax.lax.all_gather_invariant(x, axis_name, tiled=True)  # type: ignore[attr-defined]  # jax before to=


# ----------------------------------------------------------------------------- axis_name=


def check_axis_name(axis_name: object) -> AxisName:
    """``axis_name`` as the collectives take it, checked to be bound here (inside the
    ``shard_map`` or ``pmap`` that maps it); ``None`` stays ``None``."""
    if axis_name is None:
        return None
    if not _GATHER_TO and not hasattr(jax.lax, "all_gather_invariant"):
        raise ValueError(
            f"axis_name= needs jax.lax.all_gather(to='invarying') or jax.lax.all_gather_invariant, which jax "
            f"{jax.__version__} lacks: upgrade jax"
        )
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    if not names or not all(isinstance(name, Hashable) and not isinstance(name, tuple) for name in names):
        raise TypeError(
            "axis_name must be the name of a mapped axis (of shard_map or pmap) or a non-empty tuple of names; "
            f"got {axis_name!r}"
        )
    try:
        jax.lax.axis_size(axis_name)
    except NameError:
        raise ValueError(
            f"axis_name {axis_name!r} is not a mapped axis here: call the loss inside the shard_map or pmap "
            "that maps it (under plain jax.jit, sharded inputs need no axis_name)"
        ) from None
    try:  # a vmap's axis is bound too, but takes no invariant gather (JAX: "pvary should be called under shard_map")
        _gather_invariant(jnp.zeros((1,), jnp.int32), axis_name)  # (unused: compiled away)
    except ValueError:
        raise ValueError(
            f"axis_name {axis_name!r} is an axis of jax.vmap, whose samples are no devices: name an axis of the "
            "shard_map or pmap that splits the batch across devices (or leave it out: each sample its own batch)"
        ) from None
    return axis_name


def _sum_over(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """The sum of ``x`` over every device of ``axis_name``, the same on all: an invariant all-gather,
    whose transpose gives each device the cotangent of its own ``x`` (a ``psum`` under ``pmap`` would
    give each the sum of all devices' cotangents)."""
    return _gather_invariant(x[None], axis_name).sum(0)


def reduce_images(per_image: jax.Array, reduction: str, axis_name: AxisName) -> jax.Array:
    """``'sum'`` or ``'mean'`` of the per-image losses of every device. The devices of a ``shard_map``
    or ``pmap`` hold equal batches, so the global count is static."""
    total = _sum_over(per_image.sum(), axis_name)
    if reduction == "sum":
        return total
    return total / max(per_image.shape[0] * jax.lax.axis_size(axis_name), 1)  # no image: 0


def union_rows(
    errors: jax.Array, codes: jax.Array, axis_name: AxisName, rows_loss: Callable[[jax.Array, jax.Array], jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Loss and presence ``[K]`` of each class row of the union of every device's ``errors [B, K, N]``
    (``codes``: the pixels' codes). ``rows_loss`` takes ``[S, R, N]`` errors and codes to the losses
    ``[R]`` of rows ``[:, r, :]``. Device ``d`` computes
    classes ``[d k, (d + 1) k)`` with ``k = ceil(K / n)``; the classes past ``K`` are ignored pixels
    only (loss 0) and are dropped again."""
    num_devices = jax.lax.axis_size(axis_name)
    num_rows = errors.shape[1]
    padding = -num_rows % num_devices
    if padding:
        errors = jnp.pad(errors, ((0, 0), (0, padding), (0, 0)))
        codes = jnp.pad(codes, ((0, 0), (0, padding), (0, 0)), constant_values=IGNORED)
    # [B, K', N] -> [n B, K' / n, N]: every device's images, this device's classes
    errors = jax.lax.all_to_all(errors, axis_name, split_axis=1, concat_axis=0, tiled=True)
    codes = jax.lax.all_to_all(codes, axis_name, split_axis=1, concat_axis=0, tiled=True)
    loss = rows_loss(errors, codes)
    present = (codes == 1).any(axis=(0, 2))
    return _gather_invariant(loss, axis_name)[:num_rows], _gather_invariant(present, axis_name)[:num_rows]


# ----------------------------------------------------------------------------- plain jit over a mesh


def _auto_mesh(x: jax.Array) -> tuple[Any, tuple[str, ...]]:
    """The mesh ``x`` lives on and its axes of more than one device, where all are automatic (plain
    ``jax.jit`` of sharded inputs); else ``(None, ())``: one device, inside a ``shard_map`` or
    ``pmap`` (manual axes), or explicit sharding (whose specs the types carry)."""
    if not (hasattr(jax, "shard_map") and hasattr(jax, "typeof") and hasattr(jax.sharding, "AxisType")):
        return None, ()  # an older jax: the partitioner places the rows
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if mesh is None or not mesh.axis_names or mesh.size <= 1:
        return None, ()
    if any(kind != jax.sharding.AxisType.Auto for kind in mesh.axis_types):
        return None, ()
    return mesh, tuple(name for name in mesh.axis_names if mesh.shape[name] > 1)


def _explicit_mesh(*arrays: Any) -> Any:
    """The mesh of the first of ``arrays`` that lies on one with explicit axes of several devices
    (``AxisType.Explicit``, ``jax.make_mesh``'s default in recent JAX); else None."""
    if not (hasattr(jax, "typeof") and hasattr(jax.sharding, "AxisType") and hasattr(jax.sharding, "auto_axes")):
        return None
    for x in arrays:
        mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None) if isinstance(x, jax.Array) else None
        if mesh is None:
            continue
        kinds = dict(zip(mesh.axis_names, mesh.axis_types))
        if any(kind == jax.sharding.AxisType.Explicit and mesh.shape[name] > 1 for name, kind in kinds.items()):
            return mesh
    return None


def auto_on_explicit_meshes(loss: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``loss(prediction, labels, ...)``, where its per-pixel inputs (the prediction, the labels, the segment
    ids) lie on a mesh with explicit axes, computed with those axes automatic (``jax.sharding.auto_axes``):
    explicit sharding types each reshape of a sharded axis, and would refuse the loss's (the layout of
    rows). The partitioner then places the rows, as under plain ``jax.jit`` of sharded inputs; the loss
    comes out replicated."""

    signature = inspect.signature(loss)
    per_pixel = (*list(signature.parameters)[:2], "segment_ids")  # (probas or logits, labels or targets)

    @functools.wraps(loss)
    def on_auto_axes(*args: Any, **kwargs: Any) -> jax.Array:
        given = signature.bind(*args, **kwargs)  # the loss's own names, by position or keyword
        mesh = _explicit_mesh(*(given.arguments.get(name) for name in per_pixel))
        if mesh is None:
            return loss(*args, **kwargs)

        def auto(*inputs: Any) -> jax.Array:
            call = signature.bind(*args, **kwargs)
            call.arguments.update(zip(per_pixel, inputs))
            return loss(*call.args, **call.kwargs)

        out = jax.sharding.NamedSharding(mesh, P())
        inputs = [given.arguments.get(name) for name in per_pixel]
        return jax.sharding.auto_axes(auto, axes=mesh.axis_names, out_sharding=out)(*inputs)

    return on_auto_axes


def split_by_partitioner(x: jax.Array) -> bool:
    """Whether ``x`` lies on several devices of a mesh whose axes plain ``jax.jit`` partitions."""
    return bool(_auto_mesh(x)[1])


def callbacks_run_here(x: jax.Array) -> bool:
    """Whether a host callback can take ``x``: not inside a ``shard_map`` manual along some mesh axes
    only (JAX runs callbacks on every device or on one, not on a partly automatic mesh)."""
    if not (hasattr(jax, "typeof") and hasattr(jax.sharding, "AxisType")):
        return True
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    kinds = set(getattr(mesh, "axis_types", ()))
    return not (jax.sharding.AxisType.Manual in kinds and len(kinds) > 1)


def split_rows(
    rows_loss: Callable[..., Any],
    rows: tuple[jax.Array, ...],
    row_axis: int,
    shared: tuple[jax.Array, ...] = (),
    out_row_axes: tuple[int, ...] = (0,),
) -> Any:
    """``rows_loss(*rows, *shared)``, its rows (axis ``row_axis`` of each of ``rows``; axis
    ``out_row_axes[i]`` of output ``i``) split over the devices of the inputs' mesh under plain
    ``jax.jit``; a plain call on one device, and inside ``shard_map`` or ``pmap``. Rows are
    padded with ignored pixels to a multiple of the devices, and the padding's results dropped."""
    mesh, axes = _auto_mesh(rows[0])
    num_rows = rows[0].shape[row_axis]
    if not axes or num_rows == 0:
        return rows_loss(*rows, *shared)
    padding = -num_rows % math.prod(mesh.shape[name] for name in axes)
    if padding:
        widths = [(0, 0)] * rows[0].ndim
        widths[row_axis] = (0, padding)
        errors, codes = rows  # the first is the errors (padded with 0), the second the codes
        rows = (jnp.pad(errors, widths), jnp.pad(codes, widths, constant_values=IGNORED))

    def spec(ndim: int, axis: int) -> P:
        return P(*(axes if dim == axis else None for dim in range(ndim)))

    in_specs = tuple(spec(x.ndim, row_axis) for x in rows) + tuple(P() for _ in shared)
    out_shapes = jax.eval_shape(rows_loss, *rows, *shared)
    single = not isinstance(out_shapes, tuple)
    out_shapes = (out_shapes,) if single else out_shapes
    out_specs = tuple(spec(s.ndim, axis) for s, axis in zip(out_shapes, out_row_axes))
    call = jax.shard_map(
        (lambda *args: (rows_loss(*args),)) if single else rows_loss,
        mesh=mesh,
        in_specs=in_specs,
        out_specs=out_specs,
    )
    outs = tuple(
        jax.lax.slice_in_dim(out, 0, num_rows, axis=axis) for out, axis in zip(call(*rows, *shared), out_row_axes)
    )
    return outs[0] if single else outs
