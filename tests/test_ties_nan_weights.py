"""Three answers that were silently different or wrong before: the gradient at tied errors, at NaN
predictions, and in learned class weights.

- Ties: every path (C kernel, torch.sort float32 and float64, scene kernel and scene sort,
  TensorFlow, JAX) orders tied errors by pixel index, so each returns the same subgradient,
  :func:`lovasz.reference.lovasz_extension_grad`'s. Ties are common: a saturated softmax gives
  errors of exactly 0 and 1.
- NaN: a NaN (or inf) logit at a valid pixel makes the loss NaN and that pixel's gradient NaN,
  as torch's own losses do (AMP's GradScaler looks for it there); an ignored pixel's stays 0.
- Class weights that require grad get theirs (finite differences), as in JAX and TF.
"""

import copy
import functools

import numpy as np
import pytest

from conftest import require
from lovasz import reference as R

torch = require("torch")
L = require("lovasz.torch")
core = require("lovasz._torch_core")

TIED = np.array([0.0, 0.25, 0.5, 0.75, 1.0])


def tied_case(seed=0, batch=2, num_classes=3, pixels=40):
    """Probabilities drawn from five values (many exact ties, errors of 0 and 1), labels with ignored pixels."""
    rng = np.random.default_rng(seed)
    probas = rng.choice(TIED, size=(batch, num_classes, pixels))
    labels = rng.integers(0, num_classes, (batch, pixels))
    labels[0, :3] = 255
    return probas, labels


def expected_grad(probas, labels, per_image):
    """d loss / d probas of lovasz_softmax(classes='all'), ties in pixel order: the oracle's subgradient."""
    batch, num_classes, pixels = probas.shape
    grad = np.zeros(probas.shape)
    sets = [(b,) for b in range(batch)] if per_image else [tuple(range(batch))]
    for images in sets:
        p = probas[list(images)].transpose(1, 0, 2).reshape(num_classes, -1)  # [C, images x pixels]
        y = labels[list(images)].reshape(-1)
        valid = y != 255
        for c in range(num_classes):
            fg = (y[valid] == c).astype(float)
            errors = np.abs(fg - p[c, valid])
            slope = np.where(errors > 0, 1 - 2 * fg, 0.0)
            g = np.zeros(p.shape[1])
            g[valid] = R.lovasz_extension_grad(errors, fg) * slope / num_classes / len(sets)
            grad[list(images), c] = g.reshape(len(images), pixels)
    return grad


def torch_paths():
    """(name, dtype, setup) of every CPU path of lovasz.torch's dense rows."""
    return [
        ("kernel-float32", torch.float32, lambda mp: None),
        ("sort-float32", torch.float32, lambda mp: mp.setattr(core, "_use_c_kernel", lambda pred: False)),
        ("sort-float64", torch.float64, lambda mp: None),
    ]


@pytest.mark.parametrize("name,dtype,setup", torch_paths(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("per_image", [False, True])
def test_torch_ties_in_pixel_order_on_every_path(monkeypatch, name, dtype, setup, per_image):
    setup(monkeypatch)
    probas, labels = tied_case()
    x = torch.tensor(probas, dtype=dtype, requires_grad=True)
    L.lovasz_softmax(x, torch.tensor(labels), "all", per_image, 255).backward()
    np.testing.assert_allclose(x.grad.double().numpy(), expected_grad(probas, labels, per_image), atol=1e-7)


@pytest.mark.parametrize("kernel", [True, False])
def test_torch_scene_ties_in_point_order(monkeypatch, kernel):
    """Points of scenes (offsets=) on the points kernel and on the scene sort: each scene's gradient is
    the oracle's subgradient of that scene alone."""
    if not kernel:
        monkeypatch.setattr(core, "_use_c_kernel", lambda pred: False)
    probas, labels = tied_case(seed=1, batch=3)
    points = torch.tensor(probas.transpose(0, 2, 1).reshape(-1, 3), dtype=torch.float32, requires_grad=True)
    offsets = torch.tensor([40, 80, 120])
    L.lovasz_softmax(points, torch.tensor(labels.reshape(-1)), "all", True, 255, offsets=offsets).backward()
    expected = expected_grad(probas, labels, per_image=True).transpose(0, 2, 1).reshape(-1, 3)
    np.testing.assert_allclose(points.grad.double().numpy(), expected, atol=1e-7)


def test_saturated_logits_same_gradient_on_every_torch_path(monkeypatch):
    """The issue's probe: logits so large that the softmax gives exact 0s and 1s. The float32 kernel and
    the float64 sort path differed by 1.4e-3 (a whole Jaccard step) when their tie orders differed."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 1000
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    grads = {}
    for name, dtype, setup in torch_paths():
        with monkeypatch.context() as mp:
            setup(mp)
            x = logits.to(dtype).requires_grad_()
            L.lovasz_softmax(x.softmax(1), labels, "present").backward()
            grads[name] = x.grad.double()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads["sort-float64"], rtol=0, atol=1e-6, msg=name)


def _framework_grad(module, probas, labels, per_image, float64):
    M = require(module)
    if module == "lovasz.tf":
        tf = require("tensorflow")
        x = tf.constant(probas, dtype=tf.float64 if float64 else tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = M.lovasz_softmax(x, tf.constant(labels), "all", per_image, 255, order="BCHW")
        return tape.gradient(loss, x).numpy()
    jax = require("jax")
    jax.config.update("jax_enable_x64", True)
    x = jax.numpy.asarray(probas, dtype=jax.numpy.float64 if float64 else jax.numpy.float32)
    return np.asarray(jax.grad(lambda x: M.lovasz_softmax(x, jax.numpy.asarray(labels), "all", per_image, 255))(x))


@pytest.mark.parametrize("module", ["lovasz.tf", "lovasz.jax"])
@pytest.mark.parametrize("float64", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_tf_and_jax_ties_in_pixel_order(module, float64, per_image):
    probas, labels = tied_case(seed=2)
    grad = _framework_grad(module, probas, labels, per_image, float64)
    np.testing.assert_allclose(grad, expected_grad(probas, labels, per_image), atol=1e-7)


# ----------------------------------------------------------------------------- NaN


def nan_case(dtype, from_logits):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
    x = x if from_logits else x.softmax(1)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[1, 1, 1] = 255
    x[0, 1, 0, 0] = float("nan")  # a valid pixel
    x[1, 2, 1, 1] = float("nan")  # an ignored one
    if from_logits:
        x[0, 0, 2, 2] = float("inf")  # a valid pixel: its softmax is NaN
    return x, labels


@pytest.mark.parametrize("name,dtype,setup", torch_paths(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_torch_nan_at_a_valid_pixel_gives_a_nan_gradient_there(monkeypatch, name, dtype, setup, from_logits, per_image):
    setup(monkeypatch)
    x, labels = nan_case(dtype, from_logits)
    x.requires_grad_()
    loss = L.lovasz_softmax(x, labels, "present", per_image, 255, from_logits=from_logits, reduction="none")
    loss.sum().backward()
    grad = x.grad
    assert torch.isnan(loss[0] if per_image else loss).all()
    if per_image:
        assert torch.isfinite(loss[1])  # the other image's loss is untouched
    assert torch.isnan(grad[0, 1, 0, 0])  # the NaN probability's own channel
    if from_logits:  # through the softmax: every channel of both pixels
        assert torch.isnan(grad[0, :, 0, 0]).all() and torch.isnan(grad[0, :, 2, 2]).all()
    assert torch.equal(grad[1, :, 1, 1], torch.zeros(3, dtype=dtype))  # ignored: an exact 0
    bad = torch.zeros(grad.shape, dtype=torch.bool)
    bad[0, :, 0, 0] = bad[0, :, 2, 2] = True
    assert torch.isfinite(grad[~bad]).all()


@pytest.mark.parametrize("kernel", [True, False])
def test_torch_hinge_and_scenes_nan_gradient(monkeypatch, kernel):
    if not kernel:
        monkeypatch.setattr(core, "_use_c_kernel", lambda pred: False)
    scores = torch.randn(2, 6, 7)
    scores[0, 1, 1] = float("nan")
    scores.requires_grad_()
    L.lovasz_hinge(scores, torch.randint(0, 2, (2, 6, 7))).backward()
    assert torch.isnan(scores.grad[0, 1, 1])
    assert torch.isfinite(scores.grad.flatten()[torch.arange(84) != 8]).all()  # all but [0, 1, 1]

    logits = torch.randn(30, 4)
    logits[12, 2] = float("nan")
    logits.requires_grad_()
    loss = L.lovasz_softmax(
        logits,
        torch.randint(0, 4, (30,)),
        offsets=torch.tensor([10, 30]),
        per_image=True,
        from_logits=True,
        reduction="none",
    )
    loss.sum().backward()
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
    assert torch.isnan(logits.grad[12]).all()
    rest = torch.ones(30, dtype=torch.bool)
    rest[12] = False
    assert torch.isfinite(logits.grad[rest]).all()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("points", [False, True])
def test_torch_elu_margin_nan_at_an_ignored_pixel_has_a_zero_gradient(points, symmetric):
    """The elu margin's backward gave 0 * NaN = NaN at an ignored NaN score (vectorised elu; 8 of 64 ignored:
    no gathering of the valid pixels first), against the documented zero gradient of ignored pixels."""
    x = torch.randn(64) if points else torch.randn(1, 64)
    y = torch.randint(0, 2, x.shape)
    x[..., :8], y[..., :8] = float("nan"), 255
    scenes = dict(offsets=torch.tensor([32, 64])) if points else {}
    for loss in [L.lovasz_hinge, lambda x, y, **kw: L.lovasz_multilabel(x[:, None], y[:, None], **kw)]:
        x.requires_grad_()
        value = loss(x, y, ignore=255, margin="elu", symmetric=symmetric, **scenes)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(value) and (grad[..., :8] == 0).all() and torch.isfinite(grad).all()
        x = x.detach()


@pytest.mark.parametrize(
    "module,mode",
    [("lovasz.tf", "eager"), ("lovasz.tf", "function"), ("lovasz.tf", "xla"), ("lovasz.jax", "eager")],
)
@pytest.mark.parametrize("kind", ["softmax", "hinge", "multilabel", "hinge elu", "multilabel elu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tf_and_jax_nan_gradient_where_valid_zero_where_ignored(module, mode, kind, dtype):
    """(The elu margin of an ignored NaN reached the gradient under XLA, where no pixel is left out first.)"""
    from test_backends import call

    kind, _, margin = kind.partition(" ")

    if module == "lovasz.jax":
        require("jax").config.update("jax_enable_x64", True)
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 4, 5, 3)).astype(dtype)
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, 0, 0] = 255
    if kind == "softmax":
        pred, lab, options, last = logits, labels, dict(from_logits=True), True
    elif kind == "hinge":
        pred, lab, options, last = logits[..., 0], np.where(labels == 255, 255, labels % 2), {}, None
    else:
        pred, lab, options, last = logits, np.where(labels[..., None] == 255, 255, logits > 0), {}, True
    if margin:
        options["margin"] = margin
    pred = pred.copy()
    pred[0, 0, 0] = np.nan  # ignored
    pred[1, 2, 3] = np.nan  # valid
    value, grad = call(
        module, mode, kind, pred, lab, channels_last=last, ignore=255, per_image=True, reduction="none", **options
    )
    assert np.isnan(value[1]) and np.isfinite(value[0])
    assert np.isnan(grad[1, 2, 3]).all()
    assert not np.any(grad[0, 0, 0])
    rest = np.ones(grad.shape, dtype=bool)
    rest[1, 2, 3] = False
    assert np.isfinite(grad[rest]).all()


# ----------------------------------------------------------------------------- class weights


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2, 2]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_class_weights_get_their_gradient(per_image, classes, dtype):
    g = torch.Generator().manual_seed(11)
    probas = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64).softmax(1)
    labels = torch.randint(0, 3, (2, 6, 7), generator=g)
    labels[0, 0] = 255
    labels[1][labels[1] == 1] = 0  # a class absent from one image
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)

    def loss(weights, x):
        return L.lovasz_softmax(x, labels, classes, per_image, 255, weights=weights)

    weights = w.to(dtype).requires_grad_()
    x = probas.to(dtype).requires_grad_()
    value = loss(weights, x)
    value.backward()
    eps = 1e-6
    numeric = [(loss(w + eps * e, probas) - loss(w - eps * e, probas)) / (2 * eps) for e in torch.eye(3).double()]
    tol = 1e-6 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(weights.grad.double(), torch.stack(numeric), rtol=0, atol=tol)
    assert value.item() == pytest.approx(loss(w, probas).item(), rel=1e-6)  # the value is unchanged
    # and the gradient in the prediction is the one without learned weights
    x_fixed = probas.to(dtype).requires_grad_()
    loss(w.to(dtype), x_fixed).backward()
    torch.testing.assert_close(x.grad, x_fixed.grad)


def test_torch_class_weights_gradient_multilabel_compile_and_jax():
    """Multi-label's channel weights too, under torch.compile, and equal to JAX's derivative."""
    jax = require("jax")
    LJ = require("lovasz.jax")
    jax.config.update("jax_enable_x64", True)
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 2, (2, 3, 5, 5), generator=g)
    w = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64)

    def loss(weights):
        return L.lovasz_multilabel(logits, targets, weights=weights)

    expected = jax.grad(lambda v: LJ.lovasz_multilabel(logits.numpy(), targets.numpy(), weights=v))(w.numpy())
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        weights = w.clone().requires_grad_()
        fn(weights).backward()
        np.testing.assert_allclose(weights.grad.numpy(), np.asarray(expected), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["tf.Variable", "keras.Variable"])
def test_tf_learned_class_weights_get_their_gradient(kind):
    """A variable of class weights stays in the graph (not read as numbers): its gradient is torch's."""
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    g = torch.Generator().manual_seed(16)
    probas = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).softmax(1)
    labels = torch.randint(0, 3, (2, 5, 5), generator=g)
    start = [0.5, 2.0, 1.5]
    weights = tf.Variable(start, dtype=tf.float64) if kind == "tf.Variable" else require("keras").Variable(start)
    with tf.GradientTape() as tape:
        loss = LTF.lovasz_softmax(probas.numpy(), labels.numpy(), order="BCHW", weights=weights)
    expected = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    L.lovasz_softmax(probas, labels, weights=expected).backward()
    got = tape.gradient(loss, weights)
    assert got is not None and float(tf.reduce_max(tf.abs(got))) > 0
    np.testing.assert_allclose(np.asarray(got), expected.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_tf_weights_as_a_list_of_tensors_in_a_graph():
    """A list of graph tensors as weights is converted by TF (NumPy cannot read a symbolic tensor)."""
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    g = torch.Generator().manual_seed(17)
    probas = torch.randn(2, 3, 4, 4, generator=g).softmax(1)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    expected = L.lovasz_softmax(probas, labels, weights=[0.5, 2.0, 1.5])

    @tf.function
    def loss(p, y, w):
        return LTF.lovasz_softmax(p, y, order="BCHW", weights=[w[0], w[1], 1.5])

    got = loss(probas.numpy(), labels.numpy(), tf.constant([0.5, 2.0]))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)


def test_torch_weights_in_a_graph_are_checked_when_it_runs():
    """A weights tensor in a compiled or exported graph (a learned one may turn negative at any step) holds
    values only known when the graph runs: an assert there, as for the labels. Unchecked, a negative weight
    gave a loss of the wrong sign, a NaN one a NaN loss, without a word."""
    g = torch.Generator().manual_seed(15)
    logits, labels = torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 3, (2, 5, 5), generator=g)
    good, message = torch.tensor([1.0, 2.0, 3.0]), "weights must be finite numbers >= 0"

    class Loss(torch.nn.Module):
        def forward(self, x, y, w):
            return L.lovasz_softmax(x, y, from_logits=True, weights=w)

    compiled = torch.compile(Loss(), fullgraph=True, backend="aot_eager")
    exported = torch.export.export(Loss(), (logits, labels, good)).module()
    module = L.LovaszLoss("multiclass", class_weights=good.clone())
    compiled_module = torch.compile(module, fullgraph=True, backend="aot_eager")
    expected = Loss()(logits, labels, good)
    for fn in (compiled, exported):
        torch.testing.assert_close(fn(logits, labels, good), expected)
    torch.testing.assert_close(compiled_module(logits, labels), expected)
    for bad in ([1.0, -2.0, 3.0], [1.0, float("nan"), 3.0], [1.0, float("inf"), 0.0]):
        for fn in (compiled, exported):
            with pytest.raises(RuntimeError, match=message):
                fn(logits, labels, torch.tensor(bad))
        module.class_weights.copy_(torch.tensor(bad))  # an optimiser's step, say
        with pytest.raises(RuntimeError, match="class_" + message):
            compiled_module(logits, labels)


def test_tf_weights_in_a_graph_are_checked_when_it_runs():
    """A variable of weights in a tf.function holds values known only when the graph runs: an assert there;
    under XLA and tf.vectorized_map, which take none, the loss is NaN. Unchecked, a negative weight gave a loss
    of the wrong sign, a NaN one a NaN loss, without a word."""
    tf = require("tensorflow")
    LTF = require("lovasz.tf")
    g = torch.Generator().manual_seed(18)
    probas = torch.randn(2, 3, 4, 4, generator=g).softmax(1)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    weights = tf.Variable([0.5, 2.0, 1.5])
    softmax = functools.partial(LTF.lovasz_softmax, probas.numpy(), labels.numpy(), order="BCHW")
    multilabel = functools.partial(LTF.lovasz_multilabel, logits.numpy(), (logits > 0).int().numpy(), order="BCHW")
    for loss in (softmax, multilabel):
        graph = tf.function(lambda: loss(weights=weights))
        xla = tf.function(lambda: loss(weights=weights), jit_compile=True)
        expected = float(loss(weights=[0.5, 2.0, 1.5]))
        assert float(graph()) == pytest.approx(expected, rel=1e-6)
        assert float(xla()) == pytest.approx(expected, rel=1e-6)
        for bad in ([1.0, -2.0, 3.0], [1.0, float("nan"), 3.0], [1.0, float("inf"), 0.0]):
            weights.assign(bad)  # an optimiser's step, say
            with pytest.raises(tf.errors.InvalidArgumentError, match="weights must be finite numbers >= 0"):
                graph()
            assert np.isnan(float(xla()))
            mapped = tf.vectorized_map(lambda w: loss(weights=w), tf.stack([tf.constant([0.5, 2.0, 1.5]), weights]))
            assert float(mapped[0]) == pytest.approx(expected, rel=1e-6) and np.isnan(float(mapped[1]))
        weights.assign([0.5, 2.0, 1.5])


def test_jax_traced_weights_make_the_loss_nan_where_bad():
    """Weights traced by jax.jit or jax.grad hold no values to raise on: a negative or NaN one makes the loss
    and its gradient NaN, as a bad label does (it gave a loss of the wrong sign without a word)."""
    jax = require("jax")
    LJ = require("lovasz.jax")
    g = torch.Generator().manual_seed(19)
    probas = torch.randn(2, 3, 4, 4, generator=g).softmax(1).numpy()
    labels = torch.randint(0, 3, (2, 4, 4), generator=g).numpy()
    logits = torch.randn(2, 3, 4, 4, generator=g).numpy()
    good = np.array([0.5, 2.0, 1.5], np.float32)
    for loss, x in (
        (lambda p, w: LJ.lovasz_softmax(p, labels, weights=w), probas),
        (lambda p, w: LJ.lovasz_multilabel(p, (logits > 0).astype(np.int32), weights=w), logits),
    ):
        jitted = jax.jit(loss)
        assert float(jitted(x, good)) == pytest.approx(float(loss(x, good)), rel=1e-6)
        assert np.isfinite(np.asarray(jax.grad(loss, argnums=1)(x, good))).all()
        for bad in ([1.0, -2.0, 3.0], [1.0, np.nan, 3.0]):
            bad = np.array(bad, np.float32)
            assert np.isnan(float(jitted(x, bad)))
            assert np.isnan(np.asarray(jax.grad(loss, argnums=1)(x, bad))).all()
            assert np.isnan(np.asarray(jax.jit(jax.grad(loss))(x, bad))).all()
            with pytest.raises(ValueError, match="weights must be finite numbers >= 0"):
                loss(x, bad)  # concrete: checked at once
        per_sample = jax.vmap(lambda w: loss(x, w))(np.stack([good, np.array([1.0, -1.0, 1.0], np.float32)]))
        assert np.isfinite(float(per_sample[0])) and np.isnan(float(per_sample[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("module", ["LovaszLoss", "CrossEntropyLovaszLoss"])
def test_torch_modules_keep_learned_class_weights_live(dtype, module):
    """A floating class_weights tensor is the modules' buffer itself, as PyTorch's losses keep ``weight``: an
    optimiser's step on it reaches the loss (a float32 copy of a float64 one stayed behind), its gradient
    comes, the module deep-copies, and the loss keeps the input's dtype."""
    g = torch.Generator().manual_seed(13)
    logits, labels = torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 3, (2, 5, 5), generator=g)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=dtype, requires_grad=True)
    loss_fn = getattr(L, module)(class_weights=weights)
    value = loss_fn(logits, labels)
    value.backward()
    assert value.dtype == torch.float32 and weights.grad is not None and bool(weights.grad.abs().sum() > 0)
    torch.optim.SGD([weights], lr=1.0).step()
    expected = getattr(L, module)(class_weights=weights.detach().float().tolist())(logits, labels)
    torch.testing.assert_close(loss_fn(logits, labels), expected)
    torch.testing.assert_close(copy.deepcopy(loss_fn)(logits, labels), expected)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16])
def test_torch_weights_of_every_real_dtype(dtype):
    g = torch.Generator().manual_seed(14)
    probas, labels = torch.rand(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    expected = L.lovasz_softmax(probas, labels, weights=[1.0, 2.0, 3.0])
    torch.testing.assert_close(L.lovasz_softmax(probas, labels, weights=torch.tensor([1, 2, 3], dtype=dtype)), expected)
    for bad in (torch.tensor([True, False, True]), torch.tensor([1j, 2, 3])):
        with pytest.raises(TypeError, match=r"weights must hold real numbers; got dtype"):
            L.lovasz_softmax(probas, labels, weights=bad)
