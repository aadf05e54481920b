"""What lovasz.torch keeps for backward: one float tensor the size of the input, nothing else."""

import pytest

from conftest import dev, require

torch = require("torch")
L = require("lovasz.torch")


def saved_bytes(loss_fn, x):
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(x)
    loss.backward()
    return sum(sizes)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {"from_logits": True},
        {"from_logits": True, "classes": [0, 2], "ignore": 255},
        {"from_logits": False, "classes": "all", "weights": [1.0, 2.0, 3.0]},
    ],
)
def test_softmax_keeps_only_the_gradient(per_image, options):
    g = torch.Generator().manual_seed(0)
    logits = dev(torch.randn(2, 3, 16, 16, generator=g))
    labels = dev(torch.randint(0, 3, (2, 16, 16), generator=g))
    x = logits.requires_grad_() if options["from_logits"] else logits.softmax(1).requires_grad_()
    assert saved_bytes(lambda x: L.lovasz_softmax(x, labels, per_image=per_image, **options), x) == 4 * x.numel()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("per_image", [False, True])
def test_hinge_keeps_only_the_gradient(per_image):
    x = dev(torch.randn(4, 32, 32)).requires_grad_()
    labels = dev(torch.randint(0, 2, (4, 32, 32)))
    assert saved_bytes(lambda x: L.lovasz_hinge(x, labels, per_image=per_image), x) == 4 * x.numel()
