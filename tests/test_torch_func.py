"""torch.func over lovasz.torch: ``vmap`` (per-sample losses and gradients), ``grad``, ``jacrev``, ``jacfwd``
and their compositions give what a loop over samples gives, or a clear error."""

import pytest

from conftest import require

torch = require("torch")
L = require("lovasz.torch")
vmap, grad, jacrev, jacfwd = (getattr(torch.func, name) for name in ("vmap", "grad", "jacrev", "jacfwd"))


def samples(seed=0):
    g = torch.Generator().manual_seed(seed)
    probas = torch.randn(4, 2, 3, 5, 6, generator=g, dtype=torch.float64).softmax(2)
    labels = torch.randint(0, 3, (4, 2, 5, 6), generator=g)
    labels[0, 0, 0] = 255
    labels[1, :, :4] = 255  # a mostly ignored sample: vmap never gathers (sizes would depend on the data)
    return probas, labels


LOSSES = {
    "softmax": lambda x, y, per_image: L.lovasz_softmax(x, y, per_image=per_image, ignore=255, weights=[1.0, 2, 0.5]),
    "hinge": lambda x, y, per_image: L.lovasz_hinge(x[:, 0] - 0.3, torch.where(y == 255, y, y % 2), per_image, 255),
    "multilabel": lambda x, y, per_image: L.lovasz_multilabel(x, x.detach() > 0.3, per_image=per_image),
}


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("labels_mapped", [False, True])
def test_vmap_and_per_sample_gradients_equal_a_loop(kind, per_image, labels_mapped):
    probas, labels = samples()
    fn = LOSSES[kind]
    in_dims = (0, 0 if labels_mapped else None)
    y = labels if labels_mapped else labels[0]
    pick = (lambda i: labels[i]) if labels_mapped else (lambda i: labels[0])
    values = vmap(lambda x, y: fn(x, y, per_image), in_dims=in_dims)(probas, y)
    grads = vmap(grad(lambda x, y: fn(x, y, per_image)), in_dims=in_dims)(probas, y)
    for i in range(len(probas)):
        x = probas[i].clone().requires_grad_()
        value = fn(x, pick(i), per_image)
        value.backward()
        torch.testing.assert_close(values[i], value.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grads[i], x.grad, rtol=1e-12, atol=1e-14)


def test_jacrev_jacfwd_and_compositions():
    probas, labels = samples(1)

    def per_image(x):
        return L.lovasz_softmax(x, labels[0], per_image=True, reduction="none", ignore=255)

    rows = []
    for b in range(2):
        x = probas[0].clone().requires_grad_()
        per_image(x)[b].backward()
        rows.append(x.grad)
    expected = torch.stack(rows)
    torch.testing.assert_close(jacrev(per_image)(probas[0]), expected)
    torch.testing.assert_close(jacfwd(per_image)(probas[0]), expected)
    stacked = vmap(jacrev(per_image))(probas)  # a Jacobian per sample
    assert stacked.shape == (4, 2, *probas.shape[1:])
    torch.testing.assert_close(stacked[0], expected)
    # the loss is piecewise linear in probabilities: its Hessian is zero
    hessian = jacfwd(jacrev(lambda x: per_image(x).sum()))(probas[0])
    assert hessian.shape == probas.shape[1:] * 2 and not hessian.any()


@pytest.mark.parametrize("kind", LOSSES)
def test_transforms_outside_vmap_equal_a_loop(kind):
    """Per-sample losses of ``vmap`` differentiated outside it: ``.backward()`` (the everyday way to train on
    per-sample losses), ``grad``, ``jacrev``, ``jacfwd`` and ``jvp``. Under vmap a batched tensor of a leaf
    that requires grad says it does not (the op then kept no gradient: 'need_grad=False'), and forward mode
    gave the op's counts a tangent (torch's internal assert)."""
    probas, labels = samples(4)
    fn = LOSSES[kind]

    def losses(x):
        return vmap(lambda x, y: fn(x, y, True))(x, labels)

    expected = probas.new_zeros(len(probas), *probas.shape)  # row i: d loss_i / d probas
    for i in range(len(probas)):
        x = probas[i].clone().requires_grad_()
        fn(x, labels[i], True).backward()
        expected[i, i] = x.grad
    x = probas.clone().requires_grad_()
    weights = torch.arange(1.0, 5, dtype=torch.float64)
    (losses(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, torch.einsum("i,i...->...", weights, expected))
    torch.testing.assert_close(grad(lambda x: losses(x).sum())(probas), expected.sum(0))
    torch.testing.assert_close(jacrev(losses)(probas), expected)
    torch.testing.assert_close(jacfwd(losses)(probas), expected)
    tangent = torch.randn_like(probas)
    _, jvp_out = torch.func.jvp(losses, (probas,), (tangent,))
    torch.testing.assert_close(jvp_out, torch.einsum("ij...,j...->i", expected, tangent))
    nested = jacfwd(lambda x: vmap(vmap(lambda x, y: fn(x, y, True)))(x, labels.unflatten(0, (2, 2))))
    torch.testing.assert_close(nested(probas.unflatten(0, (2, 2))).flatten(0, 1).flatten(1, 2), expected)


@pytest.mark.parametrize("mapped", [False, True])
def test_learned_class_weights_take_their_gradient_through_vmap(mapped):
    """Class weights that require grad, shared or one row per sample (mapped: a batched tensor, which says it
    requires no grad), take the gradient a loop gives."""
    probas, labels = samples(5)
    start = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64).repeat(len(probas) if mapped else 1, 1)
    w = start.clone().requires_grad_()
    fn = lambda x, y, w: L.lovasz_softmax(x, y, ignore=255, weights=w)  # noqa: E731
    vmap(fn, in_dims=(0, 0, 0 if mapped else None))(probas, labels, w if mapped else w[0]).sum().backward()
    loop = start.clone().requires_grad_()
    sum(fn(x, y, loop[i if mapped else 0]) for i, (x, y) in enumerate(zip(probas, labels))).backward()
    assert loop.grad.abs().min() > 0
    torch.testing.assert_close(w.grad, loop.grad)


def test_torch_func_errors_are_clear():
    probas, labels = samples(2)
    bad = labels.clone()
    bad[2, 1, 1, 1] = 7
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\].*found 7"):
        vmap(lambda x, y: L.lovasz_softmax(x, y, ignore=255))(probas, bad)


def test_vmap_over_points_takes_the_scenes_from_outside_only():
    """Scenes shared by every sample map as a loop; scenes of each sample's own (a mapped ``batch=`` or
    ``offsets=``) decide each sample's grouping, which a vmap cannot: a TypeError that says so, not
    torch's data-dependent control flow error from inside the check."""
    g = torch.Generator().manual_seed(5)
    points, labels = torch.randn(4, 30, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    scene = torch.randint(0, 3, (30,), generator=g)
    loss = lambda x, batch: L.lovasz_softmax(x, labels, per_image=True, from_logits=True, batch=batch, num_scenes=3)  # noqa: E731
    torch.testing.assert_close(vmap(lambda x: loss(x, scene))(points), torch.stack([loss(x, scene) for x in points]))
    with pytest.raises(TypeError, match=r"batch must be the same for every sample of a torch\.func\.vmap"):
        vmap(loss)(points, scene.expand(4, -1))
    offsets = torch.tensor([10, 30]).expand(4, -1)
    with pytest.raises(TypeError, match=r"offsets must be the same for every sample"):
        vmap(lambda x, o: L.lovasz_softmax(x, labels, per_image=True, offsets=o))(points.softmax(-1), offsets)


@pytest.mark.parametrize("per_image", [False, True])
def test_logits_take_every_transform_as_the_softmax_outside(per_image):
    """With ``from_logits``, torch.func differentiates the softmax too (it is taken outside the op there):
    per-sample gradients, Jacobians and the Hessian equal plain autograd with ``logits.softmax(1)``."""
    probas, labels = samples(3)
    logits = probas.log() * 1.7
    logits[1, 0, :, 0, 0] = float("nan")  # at an ignored pixel: nothing changes, its gradient is 0
    options = dict(per_image=per_image, ignore=255, weights=[1.0, 2, 0.5])
    module = L.LovaszLoss("multiclass", per_image, 255, class_weights=options["weights"])

    def ours(x, y):
        return L.lovasz_softmax(x, y, from_logits=True, **options)

    def softmax_outside(x, y):
        return L.lovasz_softmax(torch.where((y == 255).unsqueeze(1), 0, x).softmax(1), y, **options)

    grads = vmap(grad(ours))(logits, labels)
    module_grads = vmap(grad(module))(logits, labels)
    for i in range(len(logits)):
        x = logits[i].clone().requires_grad_()
        softmax_outside(x, labels[i]).backward()
        torch.testing.assert_close(grads[i], x.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(module_grads[i], x.grad, rtol=1e-12, atol=1e-14)
    assert not grads[1, 0, :, 0, 0].any()
    x, y = logits[1], labels[1]
    expected = torch.autograd.functional.hessian(lambda t: softmax_outside(t, y), x)
    assert expected.abs().max() > 1e-4  # the softmax's curvature, not a zero matching a zero
    torch.testing.assert_close(torch.func.hessian(lambda t: ours(t, y))(x), expected, rtol=1e-10, atol=1e-12)
    expected = torch.autograd.functional.jacobian(lambda t: softmax_outside(t, y), x)
    torch.testing.assert_close(jacrev(lambda t: ours(t, y))(x), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(jacfwd(lambda t: ours(t, y))(x), expected, rtol=1e-12, atol=1e-14)
