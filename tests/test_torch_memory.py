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


@pytest.mark.parametrize("num_rows, most", [(19, 8), (19, 6), (8, 8), (1, 5), (7, 1), (150, 33), (3, 100), (0, 4)])
def test_chunks_of_rows_are_as_few_and_as_even_as_they_go(num_rows, most):
    from lovasz import _torch_core as core

    step = core.even_chunks(num_rows, most)
    sizes = [min(step, num_rows - start) for start in range(0, num_rows, step)]
    assert len(sizes) == -(-num_rows // most)  # no more chunks than the bound asks for
    assert step == max(-(-num_rows // max(len(sizes), 1)), 1)  # and the largest as small as that many allow


def test_chunks_on_an_accelerator_keep_the_sort_temporaries_under_the_originals_autograd_memory():
    from lovasz import _torch_core as core

    gpu = torch.device("cuda")  # a device object only: nothing runs there
    # The bench's "LiDAR points per-scene": 19 classes of 4 scenes of 120,000 points, which took 3 chunks of
    # 8 rows (354 MiB on an H200 against the original's 188): now 4 of 5.
    assert core._rows_per_chunk(19, 480_000, gpu) == 5
    for total in (10**5, 3 * 10**6, 9_120_000, 12 * 2**20, 10**8, 10**10):
        chunk = core._chunk_elements(gpu, total)
        assert chunk <= max(total // 3, 1 << 21)  # ~50 bytes a chunk element: at most ~17 per input element
        assert chunk >= max(1 << 21, min(total // 16, 1 << 25))  # never tiny: few launches, big sorts
    assert core._chunk_elements(gpu, 10**10) == 1 << 25
    assert core._chunk_elements(torch.device("cpu"), 10**8) == 1 << 21  # the CPU keeps its cache-sized chunks
