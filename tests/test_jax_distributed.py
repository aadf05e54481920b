"""lovasz.jax over several devices: ``axis_name=`` inside ``shard_map`` and ``pmap``, and plain ``jit`` with
sharded inputs. Each distributed loss and gradient equals one call on the whole batch on one device.

The checks need 4 devices, which JAX sets up when it starts: ``test_on_four_virtual_devices`` runs this
file again in its own process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and
``LOVASZ_JAX_DEVICES=4``, where the checks below run (in the main run they are skipped). The argument
checks run in the main process.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

jax = require("jax")
jnp = jax.numpy
LJ = require("lovasz.jax")
JR = require("lovasz._jax_rows")
D = require("lovasz._jax_distributed")

from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

DEVICES = 4
INNER = os.environ.get("LOVASZ_JAX_DEVICES") == str(DEVICES)
REMAT = "Involuntary full rematerialization"
on_devices = pytest.mark.skipif(not INNER, reason="runs in the 4-device process of test_on_four_virtual_devices")

if INNER:
    jax.config.update("jax_enable_x64", True)  # float64 inputs stay float64: the lax.sort path


# ----------------------------------------------------------------------------- the main process


@pytest.mark.skipif(INNER, reason="this is the process it starts")
def test_on_four_virtual_devices(tmp_path):
    env = dict(
        os.environ,
        LOVASZ_JAX_DEVICES=str(DEVICES),
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}".strip(),
        JAX_PLATFORMS="cpu",
    )
    this = Path(__file__)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", "-n", "0"]
    command += [f"--basetemp={tmp_path}", "--rootdir", str(this.parent), str(this)]
    command += ["-k", "not test_on_four_virtual_devices"]  # itself
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    output = result.stdout[-8000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, output  # every check ran


def test_an_unbound_axis_name_is_a_value_error_naming_it():
    x, y = np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match=r"axis_name 'batch' is not a mapped axis here.*shard_map or pmap"):
        LJ.lovasz_softmax(x, y, axis_name="batch")
    with pytest.raises(ValueError, match="axis_name"):
        LJ.lovasz_hinge(x[:, 0], y, axis_name=("data", "model"))
    with pytest.raises(ValueError, match="axis_name"):
        jax.jit(lambda x, y: LJ.lovasz_multilabel(x, y, axis_name="batch"))(x, np.zeros((2, 3, 4), np.int32))


def test_a_vmap_axis_name_is_a_value_error_naming_it():
    """A vmap binds its axis name too, but its samples are no devices (JAX failed deep inside: "pvary should be
    called under jax.shard_map")."""
    x, y = np.zeros((4, 2, 3, 5), np.float32), np.zeros((4, 2, 5), np.int32)
    with pytest.raises(ValueError, match=r"axis_name 'i' is an axis of jax.vmap.*shard_map or pmap"):
        jax.vmap(lambda a, b: LJ.lovasz_softmax(a, b, from_logits=True, axis_name="i"), axis_name="i")(x, y)


@pytest.mark.parametrize("axis_name", [["batch"], (), ("batch", ["x"])])
def test_an_axis_name_that_is_no_name_is_a_type_error(axis_name):
    with pytest.raises(TypeError, match=r"axis_name must be the name of a mapped axis .* got"):
        LJ.lovasz_softmax(np.zeros((2, 3, 4), np.float32), np.zeros((2, 4), np.int32), axis_name=axis_name)


# ----------------------------------------------------------------------------- data and cases

BATCH, CLASSES, SHAPE = 2 * DEVICES, 5, (4, 6)


def data(dtype, seed=0):
    """Logits ``[8, 5, 4, 6]`` and labels with ignored pixels (255), an all-ignored image (1), class 3 in
    image 5 only (the third device's) and class 4 nowhere: 'present' decided per device would differ."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(BATCH, CLASSES, *SHAPE)) * 2).astype(dtype)
    y = rng.integers(0, 3, (BATCH, *SHAPE))
    y[5, 1, :3] = 3
    y[:, 0, :2] = 255
    y[1] = 255
    targets = (rng.random((BATCH, CLASSES, *SHAPE)) < 0.4).astype(np.int32)
    targets[:, 3] = 0
    targets[6, 3, 2] = 1  # channel 3 in image 6 only; channel 4 nowhere
    targets[:, 4] = 0
    targets[2, :, 0, :3] = 255
    return x, y, targets


def softmax(**options):
    return lambda x, y, t, axis_name=None: LJ.lovasz_softmax(x, y, **options, axis_name=axis_name)


def channels_last(**options):
    return lambda x, y, t, axis_name=None: LJ.lovasz_softmax(
        jnp.moveaxis(x, 1, -1), y, axis=-1, **options, axis_name=axis_name
    )


def hinge(**options):
    return lambda x, y, t, axis_name=None: LJ.lovasz_hinge(
        x[:, 0], jnp.where(y == 255, 255, y % 2), **options, axis_name=axis_name
    )


def multilabel(**options):
    return lambda x, y, t, axis_name=None: LJ.lovasz_multilabel(x, t, **options, axis_name=axis_name)


WEIGHTS = [1.0, 2.0, 0.5, 3.0, 1.5]
CASES = {
    "softmax batch present ignore": softmax(ignore=255, from_logits=True),
    "softmax batch all weights": softmax(classes="all", ignore=255, from_logits=True, weights=WEIGHTS),
    "softmax batch list sum": softmax(classes=[3, 0, 3], ignore=255, from_logits=True, reduction="sum"),
    "softmax batch none": softmax(ignore=255, from_logits=True, reduction="none"),
    "softmax batch channels-last": channels_last(ignore=255, from_logits=True),
    "softmax per-image present": softmax(per_image=True, ignore=255, from_logits=True),
    "softmax per-image weights sum": softmax(
        per_image=True, classes="all", ignore=255, from_logits=True, weights=WEIGHTS, reduction="sum"
    ),
    "softmax per-image none": softmax(per_image=True, ignore=255, from_logits=True, reduction="none"),
    "hinge batch": hinge(per_image=False, ignore=255),
    "hinge batch symmetric elu": hinge(per_image=False, ignore=255, margin="elu", symmetric=True),
    "hinge per-image": hinge(ignore=255),
    "hinge per-image none": hinge(ignore=255, reduction="none"),
    "multilabel batch present": multilabel(per_image=False, ignore=255),
    "multilabel batch all weights": multilabel(per_image=False, classes="all", ignore=255, weights=WEIGHTS),
    "multilabel batch probabilities": multilabel(per_image=False, ignore=255, from_logits=False),
    "multilabel per-image list": multilabel(classes=[4, 3, 1], ignore=255),
}
PER_IMAGE_NONE = {"softmax per-image none", "hinge per-image none"}
# the ways of mapping, on one case of each function and mode (the paths are crossed with every case above)
MODE_CASES = [
    "softmax batch list sum",
    "softmax per-image weights sum",
    "softmax per-image none",
    "hinge batch symmetric elu",
    "hinge per-image none",
    "multilabel batch present",
    "multilabel per-image list",
]


@pytest.fixture(params=["kernel", "sort", "float64"])
def path(request, monkeypatch):
    """The C kernel through the callback (float32), the float32 row sorts, the float64 lax.sort."""
    if request.param == "sort":
        monkeypatch.setattr(JR.C, "applies", lambda dtype, size: False)
    return request.param


def dtype_of(path):
    return np.float64 if path == "float64" else np.float32


def tolerance(path):
    return dict(rtol=1e-5, atol=1e-7) if dtype_of(path) == np.float32 else dict(rtol=1e-10, atol=1e-13)


def one_call(loss, x, y, t):
    """The reference: the value and the gradient of one call on the whole batch, on one device."""
    return jax.jit(jax.value_and_grad(lambda x, y, t: loss(x, y, t).sum()))(x, y, t)


def mesh_of(shape, names):
    return jax.sharding.Mesh(np.array(jax.devices()[: np.prod(shape)]).reshape(shape), names)


def mapped(loss, mode, per_image_none):
    """``(value, gradient)`` of ``loss`` on the batch split over 4 devices by ``mode``: the value as one
    call gives it (the images' losses concatenated for ``reduction='none'``), the gradient concatenated."""
    names = ("a", "b") if mode == "tuple" else ("i",)
    axis = names if mode == "tuple" else "i"
    mesh = mesh_of((2, 2) if mode == "tuple" else (DEVICES,), names)
    split = P(names)
    value_spec = split if per_image_none else P()

    def local(x, y, t):
        def summed(x):
            value = loss(x, y, t, axis)
            return value.sum(), value

        (_, value), grad = jax.value_and_grad(summed, has_aux=True)(x)
        return value, grad

    if mode == "pmap":

        def run(x, y, t):
            pieces = [a.reshape(DEVICES, -1, *a.shape[1:]) for a in (x, y, t)]
            value, grad = jax.pmap(local, axis_name="i")(*pieces)
            return (value.reshape(-1) if per_image_none else value[0]), grad.reshape(x.shape)

        return run
    if mode == "outside":  # the gradient taken outside shard_map, of its output
        inner = jax.shard_map(lambda x, y, t: loss(x, y, t, axis), mesh=mesh, in_specs=split, out_specs=value_spec)
        return jax.jit(lambda x, y, t: (inner(x, y, t), jax.grad(lambda x: inner(x, y, t).sum())(x)))
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=split, out_specs=(value_spec, split)))


# ----------------------------------------------------------------------------- axis_name=


@on_devices
def test_the_process_has_four_devices():
    assert jax.device_count() == DEVICES


@on_devices
def test_the_single_device_reference_is_the_oracle():
    x, y, _ = data(np.float64)
    probas = np.asarray(jax.nn.softmax(x, axis=1))
    value = jax.jit(lambda p: LJ.lovasz_softmax(p, y, ignore=255))(probas)
    np.testing.assert_allclose(float(value), R.lovasz_softmax(probas, y, ignore=255), rtol=1e-10)


@on_devices
@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_a_bad_label_on_one_device_makes_every_devices_loss_nan(mode):
    """Nothing can raise in a mapped function: a label out of range makes the loss NaN; with axis_name on
    every device (the global batch's one value, which shard_map's replication check requires to be)."""
    x, y, t = data(np.float32)
    y[6, 2, 0] = 7  # out of range, on the fourth device
    for case in ("softmax batch present ignore", "softmax per-image weights sum"):
        value, grad = mapped(CASES[case], mode, False)(x, y, t)
        assert np.isnan(np.asarray(value)).all() and np.isnan(np.asarray(grad)).any(), case


@on_devices
@pytest.mark.parametrize("case", list(CASES))
def test_shard_map_gives_the_loss_and_gradient_of_one_call(path, case):
    """Gradient taken inside shard_map (its default check_vma=True): every path."""
    x, y, t = data(dtype_of(path))
    expected_value, expected_grad = one_call(CASES[case], x, y, t)
    value, grad = mapped(CASES[case], "shard_map", case in PER_IMAGE_NONE)(x, y, t)
    expected = jax.jit(CASES[case])(x, y, t) if case in PER_IMAGE_NONE else expected_value
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected), **tolerance(path))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), **tolerance(path))
    assert np.abs(np.asarray(expected_grad)).max() > 0  # the comparison is of something


@on_devices
@pytest.mark.parametrize("per_image", [False, True])
def test_a_multilabel_of_no_channel_in_shard_map_is_zero(per_image):
    """No channel (``[B, 0, ...]``): 0 with a gradient of its shape, as one call gives (XLA cannot lower an
    all-gather of nothing, the batch mode's gather of the rows' losses)."""
    x, t = np.zeros((BATCH, 0, *SHAPE), np.float32), np.zeros((BATCH, 0, *SHAPE), np.int32)
    loss = multilabel(per_image=per_image, ignore=255)
    value, grad = mapped(loss, "shard_map", False)(x, x, t)
    assert float(value) == 0 and np.shape(grad) == x.shape


@on_devices
@pytest.mark.parametrize("case", ["softmax batch present ignore", "softmax per-image weights sum", "hinge batch"])
def test_forward_mode_inside_shard_map_gives_one_calls_jvp(path, case):
    """jax.jvp of the loss inside shard_map (each device its part of the tangent): the global loss's JVP,
    the dot product of one call's gradient with the whole tangent."""
    x, y, t = data(dtype_of(path))
    loss = CASES[case]
    _, expected_grad = one_call(loss, x, y, t)
    direction = np.linspace(-1, 1, x.size).reshape(x.shape).astype(x.dtype)
    mesh, split = mesh_of((DEVICES,), ("i",)), P("i")

    def local(x, y, t, v):
        tangent = jax.jvp(lambda x: loss(x, y, t, "i"), (x,), (v,))[1]
        return tangent[None]  # each device's (the same: the loss is the global batch's)

    tangents = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=split, out_specs=split))(x, y, t, direction)
    expected = float(np.vdot(np.asarray(expected_grad), direction))
    np.testing.assert_allclose(np.asarray(tangents), np.full(DEVICES, expected), **tolerance(path))


@on_devices
@pytest.mark.parametrize("mode", ["pmap", "outside", "tuple"])
@pytest.mark.parametrize("case", MODE_CASES)
def test_pmap_grad_outside_and_axis_tuples_give_the_loss_and_gradient_of_one_call(mode, case):
    """pmap (gradient inside), the gradient of shard_map's output, and a tuple of axis names (2 x 2)."""
    x, y, t = data(np.float32)
    expected_value, expected_grad = one_call(CASES[case], x, y, t)
    value, grad = mapped(CASES[case], mode, case in PER_IMAGE_NONE)(x, y, t)
    expected = jax.jit(CASES[case])(x, y, t) if case in PER_IMAGE_NONE else expected_value
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-5, atol=1e-7)


@on_devices
@pytest.mark.parametrize("case", ["softmax batch present ignore", "softmax per-image present", "hinge batch"])
def test_a_shard_map_manual_along_one_axis_of_two(case):
    """shard_map(axis_names={'data'}) on a 2 x 2 mesh, 'model' left to the partitioner: JAX runs no
    callback there, so float32 rows take the sort; the loss and gradient are one call's."""
    x, y, t = data(np.float32)
    loss = CASES[case]
    mesh = mesh_of((2, 2), ("data", "model"))

    def local(x, y, t):
        return jax.value_and_grad(lambda x: loss(x, y, t, "data"))(x)

    call = jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=(P(), P("data")), axis_names={"data"})
    value, grad = jax.jit(call)(x, y, t)
    expected_value, expected_grad = one_call(loss, x, y, t)
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-5, atol=1e-7)


@on_devices
def test_present_is_decided_over_the_global_batch():
    """Class 3 is in one device's images only: decided per device, the other devices' losses would
    leave it out, and the loss of the union would differ."""
    x, y, t = data(np.float32)
    loss = CASES["softmax batch present ignore"]
    value, _ = mapped(loss, "shard_map", False)(x, y, t)
    local = jax.shard_map(
        lambda x, y: LJ.lovasz_softmax(x, y, ignore=255, from_logits=True)[None],
        mesh=mesh_of((DEVICES,), ("i",)),
        in_specs=P("i"),
        out_specs=P("i"),
    )
    assert not np.allclose(float(value), float(np.mean(jax.jit(local)(x, y))), rtol=1e-3)
    np.testing.assert_allclose(float(value), float(jax.jit(loss)(x, y, t)), rtol=1e-5)


@on_devices
@pytest.mark.parametrize("per_image", [False, True])
def test_segments_of_points_with_axis_name(path, per_image):
    """Point clouds (segment_ids=): each device's segments are its own, the mean is over all of them;
    without per_image every device's points are one set."""
    dtype = dtype_of(path)
    rng = np.random.default_rng(7)
    points, segments = 30, 3  # per device
    x = rng.normal(size=(DEVICES * points, CLASSES)).astype(dtype)
    y = rng.integers(0, 4, DEVICES * points)
    y[::7] = 255
    local_ids = np.sort(rng.integers(0, segments, (DEVICES, points)), axis=1)
    global_ids = (local_ids + segments * np.arange(DEVICES)[:, None]).reshape(-1)
    options = dict(per_image=per_image, ignore=255, from_logits=True)

    def reference(x):
        return LJ.lovasz_softmax(x, y, **options, segment_ids=global_ids, num_segments=DEVICES * segments)

    def local(x, y, ids):
        def loss(x):
            return LJ.lovasz_softmax(x, y, **options, segment_ids=ids, num_segments=segments, axis_name="i")

        return jax.value_and_grad(loss)(x)

    mesh = mesh_of((DEVICES,), ("i",))
    mapped_call = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("i"), out_specs=(P(), P("i"))))
    value, grad = mapped_call(x, y, local_ids.reshape(-1))
    expected_value, expected_grad = jax.jit(jax.value_and_grad(reference))(x)
    np.testing.assert_allclose(float(value), float(expected_value), **tolerance(path))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), **tolerance(path))


# ----------------------------------------------------------------------------- plain jit, sharded inputs


def batch_sharded(*arrays):
    sharding = NamedSharding(mesh_of((DEVICES,), ("i",)), P("i"))
    return [jax.device_put(a, sharding) for a in arrays]


def compiled_text(function, *args):
    return jax.jit(function).lower(*args).compile().as_text()


PLAIN_JIT = {
    "softmax per-image": softmax(per_image=True, ignore=255, from_logits=True),
    "softmax per-image none": softmax(per_image=True, ignore=255, from_logits=True, reduction="none"),
    "hinge per-image": hinge(ignore=255),
    "multilabel per-image": multilabel(ignore=255),
    "softmax batch": softmax(ignore=255, from_logits=True),
    "hinge batch": hinge(per_image=False, ignore=255),
}


@on_devices
@pytest.mark.parametrize("case", list(PLAIN_JIT))
def test_plain_jit_of_sharded_inputs_keeps_per_image_rows_on_their_devices(path, case, capfd):
    """The loss and gradient of batch-sharded inputs equal one call; per image no all-gather at all (the
    rows stay where the images are, the CPU kernel's callback included); no partitioner warning."""
    loss = PLAIN_JIT[case]
    x, y, t = data(dtype_of(path))
    expected_value, expected_grad = jax.jit(lambda x, y, t: one_call(loss, x, y, t))(x, y, t)
    capfd.readouterr()
    args = batch_sharded(x, y, t)
    value, grad = jax.jit(lambda x, y, t: one_call(loss, x, y, t))(*args)
    text = compiled_text(lambda x, y, t: one_call(loss, x, y, t), *args)
    err = capfd.readouterr().err
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected_value), **tolerance(path))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), **tolerance(path))
    assert REMAT not in err, err[-3000:]
    assert "all-gather" not in text, [line for line in text.splitlines() if "all-gather" in line][:5]
    assert grad.sharding.spec[0] == "i"  # the gradient stays batch-sharded
    if "per-image" in case:
        per_device = {shard.device: shard.data.shape[0] for shard in grad.addressable_shards}
        assert set(per_device.values()) == {BATCH // DEVICES}, per_device
    if "batch" in case:  # the class rows move to their devices: one all-to-all, not a gather
        assert "all-to-all" in text


@on_devices
def test_the_warning_and_gather_checks_catch_a_callback_left_to_the_partitioner(capfd):
    """The check above is not blind: a plain pure_callback on the batch-sharded rows (what the kernel's
    path did) runs on device 0, which XLA reports and which all-gathers the rows."""
    x, y, _ = data(np.float32)
    (xs,) = batch_sharded(x)

    def pinned(x):
        rows = x.reshape(-1, x.shape[-1] * x.shape[-2])
        shape = jax.ShapeDtypeStruct(rows.shape[:1], rows.dtype)
        return jax.pure_callback(lambda r: np.asarray(r).sum(-1), shape, rows, vmap_method="broadcast_all")

    capfd.readouterr()
    text = compiled_text(pinned, xs)
    err = capfd.readouterr().err
    assert REMAT in err and "all-gather" in text


@on_devices
def test_plain_jit_of_points_sharded_along_the_points(path, capfd):
    """Segments of points-first inputs sharded along the points: the class rows are split over the
    devices (one all-to-all), the values and gradient those of one call, no partitioner warning."""
    dtype = dtype_of(path)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8 * DEVICES, CLASSES)).astype(dtype)
    y = rng.integers(0, CLASSES, 8 * DEVICES)
    ids = np.sort(rng.integers(0, 5, 8 * DEVICES))

    def loss(x, y, ids):
        options = dict(per_image=True, from_logits=True, segment_ids=ids, num_segments=5)
        losses = LJ.lovasz_softmax(x, y, **options, reduction="none")
        return losses, jax.grad(lambda x: LJ.lovasz_softmax(x, y, **options))(x)

    expected = jax.jit(loss)(x, y, ids)
    capfd.readouterr()
    got = jax.jit(loss)(*batch_sharded(x, y, ids))
    err = capfd.readouterr().err
    assert REMAT not in err, err[-3000:]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tolerance(path))


@on_devices
def test_sharded_inputs_without_jit_and_under_vmap_give_one_calls_values():
    x, y, _ = data(np.float32)
    loss = PLAIN_JIT["softmax per-image none"]
    expected = loss(x, y, None)
    xs, ys = batch_sharded(x, y)
    np.testing.assert_allclose(np.asarray(loss(xs, ys, None)), np.asarray(expected), rtol=1e-6)
    stacked = jax.device_put(np.stack([x, x[::-1]]), NamedSharding(mesh_of((DEVICES,), ("i",)), P(None, "i")))
    labels = np.stack([y, y[::-1]])
    got = jax.jit(jax.vmap(lambda x, y: loss(x, y, None)))(stacked, labels)
    np.testing.assert_allclose(np.asarray(got), np.stack([expected, expected[::-1]]), rtol=1e-6)


@on_devices
def test_one_device_programs_are_unchanged():
    """On one device (an unsharded input) no shard_map, no collective: the program of before."""
    x, y, _ = data(np.float32)
    text = jax.jit(lambda x: LJ.lovasz_softmax(x, y, per_image=True)).lower(x).as_text()
    assert "shard_map" not in text and "sdy.manual_computation" not in text
    assert D.split_rows(lambda e, c: e.sum((0, 2)), (jnp.ones((1, 3, 4)), jnp.ones((1, 3, 4))), 1).shape == (3,)


@on_devices
@pytest.mark.parametrize("case", list(PLAIN_JIT) + ["multilabel batch all weights", "softmax batch channels-last"])
def test_explicitly_sharded_inputs_give_one_calls_values(case):
    """Inputs on a mesh of explicit axes (``jax.make_mesh``'s default in recent JAX), whose types carry their
    sharding: every loss raised ``ShardingTypeError`` at its first reshape of the rows' layout; the loss is
    computed with the axes automatic, under jit and eagerly, with the value and gradient of one call."""
    loss = {**PLAIN_JIT, **CASES}[case]
    x, y, t = data(np.float32)
    explicit = jax.sharding.Mesh(np.array(jax.devices()), ("i",), axis_types=(jax.sharding.AxisType.Explicit,))
    args = [jax.device_put(a, NamedSharding(explicit, P("i"))) for a in (x, y, t)]
    expected_value, expected_grad = one_call(loss, x, y, t)

    def value_and_grad(x, y, t):
        return jax.value_and_grad(lambda x: loss(x, y, t).sum())(x)

    for run in [jax.jit(value_and_grad), value_and_grad]:
        with jax.set_mesh(explicit):  # (eagerly JAX needs it for any gradient of explicitly sharded inputs)
            value, grad = run(*args)
        np.testing.assert_allclose(np.asarray(value), np.asarray(expected_value), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), rtol=1e-5, atol=1e-7)
    ids = np.repeat(np.arange(DEVICES), x.size // CLASSES // DEVICES)  # points of 4 segments, one per device
    points = [
        jax.device_put(a, NamedSharding(explicit, P("i")))
        for a in (np.moveaxis(x, 1, -1).reshape(-1, CLASSES), y.reshape(-1), ids)
    ]

    def segments(x, y, ids):
        return LJ.lovasz_softmax(x, y, ignore=255, per_image=True, segment_ids=ids, num_segments=DEVICES)

    expected = segments(*(np.asarray(a) for a in points))
    np.testing.assert_allclose(np.asarray(jax.jit(segments)(*points)), np.asarray(expected), rtol=1e-5)


@on_devices
@pytest.mark.parametrize("sharded", [False, True])
def test_the_losses_take_their_arguments_by_keyword(sharded):
    """``lovasz_softmax(probas=..., labels=...)`` and the others by their own names (the wrapper for meshes of
    explicit axes took ``prediction, labels`` by position only: a TypeError since 445ad64)."""
    x, y, t = data(np.float32)
    if sharded:
        explicit = jax.sharding.Mesh(np.array(jax.devices()), ("i",), axis_types=(jax.sharding.AxisType.Explicit,))
        x, y, t = (jax.device_put(a, NamedSharding(explicit, P("i"))) for a in (x, y, t))
    mask = jnp.where(y == 255, 255, y % 2)
    calls = [
        (LJ.lovasz_softmax(x, y, ignore=255), LJ.lovasz_softmax(labels=y, probas=x, ignore=255)),
        (LJ.lovasz_hinge(x[:, 0], mask, ignore=255), LJ.lovasz_hinge(logits=x[:, 0], labels=mask, ignore=255)),
        (LJ.lovasz_multilabel(x, t, ignore=255), LJ.lovasz_multilabel(x, targets=t, ignore=255)),
    ]
    for positional, by_keyword in calls:
        np.testing.assert_array_equal(np.asarray(by_keyword), np.asarray(positional))
    with pytest.raises(TypeError, match="missing a required argument: 'labels'"):
        LJ.lovasz_softmax(probas=x)
