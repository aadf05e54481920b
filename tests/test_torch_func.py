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


def test_torch_func_errors_are_clear():
    probas, labels = samples(2)
    bad = labels.clone()
    bad[2, 1, 1, 1] = 7
    with pytest.raises(ValueError, match="labels must be in \\[0, 2\\].*found 7"):
        vmap(lambda x, y: L.lovasz_softmax(x, y, ignore=255))(probas, bad)
    with pytest.raises(RuntimeError, match="pass probabilities instead"):
        grad(lambda x: L.lovasz_softmax(x, labels[0], ignore=255, from_logits=True))(probas[0].log())
