"""Two CPU processes with gloo: the global-batch Lovász loss and the streaming metric across ranks."""

import pytest

from conftest import require

torch = require("torch")
dist = require("torch.distributed")
mp = require("torch.multiprocessing")
L = require("lovasz.torch")
from lovasz.metrics import IoUMeter  # noqa: E402

WORLD = 2
PER_RANK = 3


def global_batch(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "hinge":
        return torch.randn(WORLD * PER_RANK, 1, 6, 7, generator=g, dtype=torch.float64), \
            torch.randint(0, 2, (WORLD * PER_RANK, 6, 7), generator=g)
    logits = torch.randn(WORLD * PER_RANK, 4, 6, 7, generator=g, dtype=torch.float64)
    if kind == "multilabel":
        return logits, torch.randint(0, 2, logits.shape, generator=g)
    labels = torch.randint(0, 4, (WORLD * PER_RANK, 6, 7), generator=g)
    labels[0, :3] = 255
    labels[:PER_RANK][labels[:PER_RANK] == 3] = 2  # class 3 only on the second rank
    return logits, labels


CASES = {
    "softmax batch": ("softmax", lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, from_logits=True, **kw)),
    "softmax all classes": ("softmax", lambda x, y, **kw: L.lovasz_softmax(x.softmax(1), y, "all", ignore=255,
                                                                          weights=[1, 2, 3, 4], **kw)),
    "softmax per image": ("softmax", lambda x, y, **kw: L.lovasz_softmax(x, y, per_image=True, ignore=255,
                                                                        from_logits=True, reduction="sum", **kw)),
    "hinge batch": ("hinge", lambda x, y, **kw: L.lovasz_hinge(x, y, per_image=False, **kw)),
    "multilabel batch": ("multilabel", lambda x, y, **kw: L.lovasz_multilabel(x, y, per_image=False, **kw)),
    "module": ("softmax", lambda x, y, **kw: L.CrossEntropyLovaszLoss(ignore_index=255, ce_weight=0.0, **kw)(x, y)),
}


def _rank_main(rank: int, init_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for name, (kind, fn) in CASES.items():
            logits, labels = global_batch(kind)
            whole = logits.clone().requires_grad_()
            expected = fn(whole, labels)
            expected.backward()
            local = logits[mine].clone().requires_grad_()
            got = fn(local, labels[mine], process_group=dist.group.WORLD)
            got.backward()
            if "per image" in name:  # exact per rank: each rank's share of the sum
                expected = fn(logits[mine], labels[mine])
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name}: value on rank {rank}")
            torch.testing.assert_close(local.grad, whole.grad[mine], rtol=1e-12, atol=1e-12,
                                       msg=f"{name}: gradient on rank {rank}")

        logits, labels = global_batch("softmax")
        pred = logits.argmax(1)
        single, shared = IoUMeter(4, ignore_index=255), IoUMeter(4, ignore_index=255)
        single.update(pred, labels)
        shared.update(pred[mine], labels[mine])
        a, b = single.compute(), shared.compute()
        for key in ("dataset_miou", "per_image_miou", "per_class_image_miou", "pixel_accuracy"):
            assert abs(a[key] - b[key]) < 1e-12, (key, a[key], b[key], rank)
        torch.testing.assert_close(a["per_class"], b["per_class"], equal_nan=True)
        own = IoUMeter(4, ignore_index=255, sync=False)
        own.update(pred[mine], labels[mine])
        assert own.compute()["pixel_accuracy"] != a["pixel_accuracy"] or rank == 0
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)
