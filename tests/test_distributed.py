"""Two CPU processes with gloo: the global-batch Lovász loss and the streaming metric across ranks."""

import datetime
import time

import numpy as np
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
        return torch.randn(WORLD * PER_RANK, 1, 6, 7, generator=g, dtype=torch.float64), torch.randint(
            0, 2, (WORLD * PER_RANK, 6, 7), generator=g
        )
    if kind == "points":  # points-first [N, C], a point per "image" of the harness
        labels = torch.randint(0, 4, (WORLD * PER_RANK,), generator=g)
        labels[1] = 255
        return torch.randn(WORLD * PER_RANK, 4, generator=g, dtype=torch.float64), labels
    logits = torch.randn(WORLD * PER_RANK, 4, 6, 7, generator=g, dtype=torch.float64)
    if kind == "multilabel":
        return logits, torch.randint(0, 2, logits.shape, generator=g)
    labels = torch.randint(0, 4, (WORLD * PER_RANK, 6, 7), generator=g)
    labels[0, :3] = 255
    labels[:PER_RANK][labels[:PER_RANK] == 3] = 2  # class 3 only on the second rank
    return logits, labels


CASES = {
    "softmax batch": ("softmax", lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, from_logits=True, **kw)),
    "softmax all classes": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x.softmax(1), y, "all", ignore=255, weights=[1, 2, 3, 4], **kw),
    ),
    "softmax per image": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x, y, per_image=True, ignore=255, from_logits=True, reduction="sum", **kw),
    ),
    "hinge batch": ("hinge", lambda x, y, **kw: L.lovasz_hinge(x, y, per_image=False, **kw)),
    "multilabel batch": ("multilabel", lambda x, y, **kw: L.lovasz_multilabel(x, y, per_image=False, **kw)),
    "points batch": (
        "points",
        lambda x, y, **kw: L.lovasz_softmax(x, y, per_image=False, ignore=255, from_logits=True, **kw),
    ),
    "points of a scene, one set": (
        "points",
        lambda x, y, **kw: L.lovasz_softmax(
            x, y, per_image=False, ignore=255, from_logits=True, offsets=[x.shape[0]], **kw
        ),
    ),
    "module": ("softmax", lambda x, y, **kw: L.CrossEntropyLovaszLoss(ignore_index=255, ce_weight=0.0, **kw)(x, y)),
    # both terms: the cross-entropy was each rank's own mean (the Lovász term weighed 1/W of it in a DDP step)
    "cross-entropy + Lovász": (
        "softmax",
        lambda x, y, **kw: L.CrossEntropyLovaszLoss(ignore_index=255, class_weights=[1.0, 2.0, 0.5, 1.5], **kw)(x, y),
    ),
    "cross-entropy + Lovász per image": (
        "softmax",
        lambda x, y, **kw: L.CrossEntropyLovaszLoss(ignore_index=255, per_image=True, **kw)(x, y),
    ),
    "cross-entropy + Lovász, multilabel": (
        "multilabel",
        lambda x, y, **kw: L.CrossEntropyLovaszLoss("multilabel", class_weights=[1.0, 2.0, 0.5, 1.5], **kw)(x, y),
    ),
}


def _init(rank: int, init_file: str):
    # A collective left waiting fails after this long rather than the default 30 minutes.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30)
    )


def _done_together():
    """A barrier at the end of a rank's checks (not in ``finally``: a failed rank must not wait), so that no
    rank tears its group down while a peer is still in a collective. Once, under load in CI, a rank aborted
    ("terminate called without an active exception") with no barrier there; gloo's teardown is the suspect."""
    dist.barrier()


def _spawn(fn, tmp_path, timeout: float = 60.0):
    """Run ``fn(rank, init_file)`` on WORLD processes; fail (and kill them) if they outlive ``timeout``."""
    context = mp.start_processes(fn, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):  # raises if a rank failed
            if time.monotonic() >= deadline:
                pytest.fail(f"the ranks did not finish within {timeout} s (a hang in a collective?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()


def _rank_main(rank: int, init_file: str):
    _init(rank, init_file)
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
            expected_grad = whole.grad[mine]
            if "per image" in name:  # exact per rank: the loss of the rank's own images (no set across ranks)
                own = logits[mine].clone().requires_grad_()
                expected = fn(own, labels[mine])
                expected.backward()
                expected_grad = own.grad
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name}: value on rank {rank}")
            torch.testing.assert_close(
                local.grad, expected_grad, rtol=1e-12, atol=1e-12, msg=f"{name}: gradient on rank {rank}"
            )

        logits, labels = global_batch("softmax")
        pred = logits.argmax(1)
        single, shared = IoUMeter(4, ignore_index=255), IoUMeter(4, ignore_index=255)
        single.update(pred, labels)
        shared.update(pred[mine], labels[mine])
        a, b = single.compute(), shared.compute()
        for key in ("dataset_miou", "per_image_miou", "per_class_image_miou", "pixel_accuracy"):
            assert abs(a[key] - b[key]) < 1e-12, (key, a[key], b[key], rank)
        torch.testing.assert_close(a["per_class"], b["per_class"], equal_nan=True)
        from_numpy = IoUMeter(4, ignore_index=255)  # NumPy counts are summed over the ranks too
        from_numpy.update(pred[mine].numpy(), labels[mine].numpy())
        c = from_numpy.compute()
        for key in ("dataset_miou", "per_image_miou", "per_class_image_miou", "pixel_accuracy"):
            assert abs(a[key] - c[key]) < 1e-12, (key, a[key], c[key], rank)
        assert isinstance(c["per_class"], np.ndarray)
        np.testing.assert_allclose(c["per_class"], a["per_class"].numpy())
        own = IoUMeter(4, ignore_index=255, sync=False)
        own.update(pred[mine], labels[mine])
        assert own.compute()["pixel_accuracy"] != a["pixel_accuracy"] or rank == 0
        # A rank with no batch adds no count (it raised before the sum, and the others waited for it); ranks
        # of other class counts raise on every rank (gloo aborted the process); no update anywhere raises.
        idle = IoUMeter(4, ignore_index=255)
        if rank == 0:
            idle.update(pred, labels)
        assert abs(idle.compute()["dataset_miou"] - a["dataset_miou"]) < 1e-12
        with pytest.raises(RuntimeError, match="before any update"):
            IoUMeter(4).compute()
        other = IoUMeter(4 + rank)
        other.update(pred[mine], labels[mine])
        with pytest.raises(ValueError, match="count different numbers of classes .num_classes from 4 to 5."):
            other.compute()
        _done_together()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    _spawn(_rank_main, tmp_path)


# ----------------------------------------------------------------------------- unequal shapes across ranks

UNEQUAL = {  # (batch, height, width) of rank 0 and rank 1
    "batch sizes": ((3, 6, 7), (1, 6, 7)),
    "heights and widths": ((2, 6, 7), (2, 5, 9)),
    "same element count, different batch": ((2, 6, 6), (1, 12, 6)),  # silently wrong when shapes were assumed
    "batch and size": ((3, 4, 5), (1, 8, 9)),
    "an empty last batch": ((2, 6, 7), (0, 6, 7)),
}


def rank_batch(kind: str, case: int, rank: int, shape):
    """Rank ``rank``'s batch of ``shape`` (batch, height, width), float64, the same in every process."""
    g = torch.Generator().manual_seed(100 * case + rank)
    b, h, w = shape
    if kind == "hinge":
        labels = torch.randint(0, 2, (b, h, w), generator=g)
        labels[:, 0, :2] = 255
        return torch.randn(b, h, w, generator=g, dtype=torch.float64), labels
    if kind == "points":  # points-first [N, C] of b * h * w points
        labels = torch.randint(0, 4, (b * h * w,), generator=g)
        labels[::5] = 255
        labels[labels == 3] = 2 if rank == 0 else 3
        return torch.randn(b * h * w, 4, generator=g, dtype=torch.float64), labels
    if kind == "multilabel":
        targets = torch.randint(0, 2, (b, 3, h, w), generator=g)
        targets[:, 1] = 0 if rank == 0 else targets[:, 1]  # channel 1 only on rank 1
        targets[:, 2, 0] = 255
        return torch.randn(b, 3, h, w, generator=g, dtype=torch.float64), targets
    labels = torch.randint(0, 4, (b, h, w), generator=g)
    labels[:, :1, :3] = 255
    labels[labels == 3] = 2 if rank == 0 else 3  # class 3 only on rank 1
    return torch.randn(b, 4, h, w, generator=g, dtype=torch.float64), labels


def pixel_union(kind: str, xs, ys):
    """One [1, C, P] (hinge: [1, P]) batch holding every rank's pixels, class by class, and its labels."""
    if kind == "points":  # [P, C]: every rank's points
        return torch.cat(xs), torch.cat(ys)
    if kind == "hinge":
        return torch.cat([x.reshape(-1) for x in xs])[None], torch.cat([y.reshape(-1) for y in ys])[None]
    x = torch.cat([x.movedim(1, 0).reshape(x.shape[1], -1) for x in xs], 1)[None]
    if kind == "multilabel":
        return x, torch.cat([y.movedim(1, 0).reshape(y.shape[1], -1) for y in ys], 1)[None]
    return x, torch.cat([y.reshape(-1) for y in ys])[None]


UNEQUAL_LOSSES = {
    "softmax logits, present": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, from_logits=True, **kw),
    ),
    "softmax probabilities, present": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x.softmax(1), y, ignore=255, **kw),
    ),
    "softmax probabilities, list": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x.softmax(1), y, [0, 2, 2, 3], ignore=255, weights=[1, 2, 3, 4], **kw),
    ),
    "softmax float32 logits": (
        "softmax",
        lambda x, y, **kw: L.lovasz_softmax(x.float(), y, "all", ignore=255, from_logits=True, **kw),
    ),
    "hinge": ("hinge", lambda x, y, **kw: L.lovasz_hinge(x, y, per_image=False, ignore=255, **kw)),
    "multilabel hinge": ("multilabel", lambda x, y, **kw: L.lovasz_multilabel(x, y, per_image=False, ignore=255, **kw)),
    "multilabel probabilities": (
        "multilabel",
        lambda x, y, **kw: L.lovasz_multilabel(x.sigmoid(), y, per_image=False, ignore=255, from_logits=False, **kw),
    ),
    "points [N, C]": ("points", lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, from_logits=True, **kw)),
    "points of a scene, one set": (
        "points",
        lambda x, y, **kw: L.lovasz_softmax(x, y, ignore=255, from_logits=True, offsets=[x.shape[0]], **kw),
    ),
    "module": ("softmax", lambda x, y, **kw: L.LovaszLoss("multiclass", ignore_index=255, **kw)(x, y)),
    "cross-entropy + Lovász": (
        "softmax",
        lambda x, y, **kw: L.CrossEntropyLovaszLoss(ignore_index=255, class_weights=[1.0, 2.0, 0.5, 1.5], **kw)(x, y),
    ),
    "cross-entropy + Lovász, binary": (
        "hinge",
        lambda x, y, **kw: L.CrossEntropyLovaszLoss("binary", ignore_index=255, **kw)(x, y),
    ),
}


def _unequal_main(rank: int, init_file: str):
    _init(rank, init_file)
    try:
        group = dist.group.WORLD
        for case, (shape_name, shapes) in enumerate(UNEQUAL.items()):
            for loss_name, (kind, fn) in UNEQUAL_LOSSES.items():
                name = f"{shape_name}, {loss_name}, rank {rank}"
                tol = 1e-5 if "float32" in loss_name else 1e-12
                batches = [rank_batch(kind, case, r, shape) for r, shape in enumerate(shapes)]
                leaves = [x.clone().requires_grad_() for x, _ in batches]
                union_x, union_y = pixel_union(kind, leaves, [y for _, y in batches])
                expected = fn(union_x, union_y)
                expected.backward()  # the gradient lands, split per rank, in each rank's leaf
                x, y = batches[rank]
                local = x.clone().requires_grad_()
                got = fn(local, y, process_group=group)
                got.backward()
                assert got.dtype == expected.dtype, name
                torch.testing.assert_close(got, expected, rtol=tol, atol=tol, msg=f"{name}: value")
                torch.testing.assert_close(local.grad, leaves[rank].grad, rtol=tol, atol=tol, msg=f"{name}: gradient")

        # Batches that cannot form one: every rank raises the same error, and no rank is left waiting.
        mismatches = {
            "rank 0 has 3 classes, rank 1 has 4 classes": (
                torch.randn(2, 3 + rank, 4, 5, dtype=torch.float64),
                torch.zeros(2, 4, 5, dtype=torch.long),
            ),
            "rank 0 has float32 predictions, rank 1 has float64 predictions": (
                torch.randn(1 + rank, 4, 4, 5, dtype=(torch.float32, torch.float64)[rank]),
                torch.zeros(1 + rank, 4, 5, dtype=torch.long),
            ),
        }
        for expected_text, (x, y) in mismatches.items():
            with pytest.raises(ValueError, match="process_group") as caught:
                L.lovasz_softmax(x.requires_grad_(), y, from_logits=True, process_group=group)
            messages = [None] * WORLD
            dist.all_gather_object(messages, str(caught.value))  # the group is still in step
            assert messages[0] == messages[1], messages
            assert expected_text in messages[0], messages[0]
        # ... and the group still works afterwards.
        x, y = rank_batch("softmax", 0, rank, UNEQUAL["batch sizes"][rank])
        assert torch.isfinite(L.lovasz_softmax(x, y, ignore=255, from_logits=True, process_group=group))
        _done_together()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_unequal_shapes_across_ranks_give_the_loss_of_the_union_of_their_pixels(tmp_path):
    _spawn(_unequal_main, tmp_path)


# ----------------------------------------------------------------------------- ranks that disagree on the options


def _softmax_case(**per_rank):
    """A softmax call whose options are ``per_rank[name][rank]`` (the rest the same on every rank)."""

    def call(x, y, rank, group):
        options = {name: values[rank] for name, values in per_rank.items()}
        return L.lovasz_softmax(x, y, process_group=group, **{"from_logits": True, **options})

    return call


def _hinge_case(**per_rank):
    def call(x, y, rank, group):
        options = {name: values[rank] for name, values in per_rank.items()}
        return L.lovasz_hinge((x[:, 0]), (y == 1).long(), **{"per_image": False, **options}, process_group=group)

    return call


# The option's values on ranks 0 and 1, and the text every rank's error must hold. Only rank 0's labels of
# the "ignore" case hold 255, so that ignore=None is no error of rank 1's own: the ranks disagree, nothing else.
MISMATCHES = {
    "per_image": (
        _softmax_case(per_image=(True, False)),
        "per_image; rank 0 has per_image=True, rank 1 has per_image=False",
    ),
    "classes": (_softmax_case(classes=("present", "all")), "rank 0 has classes='present', rank 1 has classes='all'"),
    "class lists": (_softmax_case(classes=([0, 2], [0, 1])), "rank 0 has classes=[0, 2], rank 1 has classes=[0, 1]"),
    "ignore": (_softmax_case(ignore=(255, None)), "rank 0 has ignore=255, rank 1 has ignore=None"),
    "weights": (
        _softmax_case(weights=([1.0, 2.0, 3.0, 4.0], None)),
        "class weights; rank 0 has weights=[1.0, 2.0, 3.0, 4.0], rank 1 has weights=None",
    ),
    "weights, one differs": (
        _softmax_case(weights=([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.5])),
        "rank 0 has weights=[1.0, 2.0, 3.0, 4.0], rank 1 has weights=[1.0, 2.0, 3.0, 4.5]",
    ),
    "from_logits": (
        _softmax_case(from_logits=(True, False)),
        "rank 0 has the loss 'softmax of logits', rank 1 has the loss 'softmax of probabilities'",
    ),
    "the loss": (
        lambda x, y, rank, group: (
            L.lovasz_softmax(x, y, from_logits=True, process_group=group)
            if rank == 0
            else L.lovasz_multilabel(
                x, torch.nn.functional.one_hot(y, 4).movedim(-1, 1), per_image=False, process_group=group
            )
        ),
        "rank 0 has the loss 'softmax of logits', rank 1 has the loss 'hinge'",
    ),
    "symmetric": (_hinge_case(symmetric=(False, True)), "rank 0 has symmetric=False, rank 1 has symmetric=True"),
    "margin": (_hinge_case(margin=("relu", "elu")), "rank 0 has margin='relu', rank 1 has margin='elu'"),
    "per-image ranks, classes": (
        _softmax_case(per_image=(True, True), classes=("all", "present")),
        "rank 0 has classes='all', rank 1 has classes='present'",
    ),
    "module, per_image": (
        lambda x, y, rank, group: L.LovaszLoss(per_image=rank == 1, process_group=group)(x, y),
        "rank 0 has per_image=False, rank 1 has per_image=True",
    ),
}


def _mismatch_main(rank: int, init_file: str):
    _init(rank, init_file)
    try:
        group = dist.group.WORLD
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randint(0, 4, (2, 5, 6), generator=g)
        with_ignored = y.clone()
        with_ignored[:, 0, 0] = 255 if rank == 0 else 3
        for name, (call, expected_text) in MISMATCHES.items():
            pred = x.softmax(1) if name == "from_logits" and rank == 1 else x
            with pytest.raises(ValueError, match="process_group") as caught:
                call(pred, with_ignored if name == "ignore" else y, rank, group)
            messages = [None] * WORLD
            dist.all_gather_object(messages, str(caught.value))  # every rank raised, and the group is in step
            assert messages[0] == messages[1], (name, messages)
            assert expected_text in messages[0], (name, messages[0])
        # The same options on every rank: no error, per-image (each rank its own images) or batch mode.
        same = {"ignore": 255, "weights": [1.0, 2.0, 3.0, 4.0], "classes": [0, 1, 1, 3]}
        y = with_ignored
        whole_x, whole_y = [None] * WORLD, [None] * WORLD
        dist.all_gather_object(whole_x, x.detach())
        dist.all_gather_object(whole_y, y)
        expected = L.lovasz_softmax(torch.cat(whole_x), torch.cat(whole_y), from_logits=True, **same)
        got = L.lovasz_softmax(x, y, from_logits=True, process_group=group, **same)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        mine = L.lovasz_softmax(x, y, per_image=True, from_logits=True, **same)
        shared = L.lovasz_softmax(x, y, per_image=True, from_logits=True, process_group=group, **same)
        torch.testing.assert_close(shared, mine, rtol=0, atol=0)
        _done_together()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ranks_that_disagree_on_the_options_raise_the_same_error_and_never_hang(tmp_path):
    # a hang (one rank in a collective that another never entered) fails at the timeout, not at gloo's 30 s
    _spawn(_mismatch_main, tmp_path, timeout=90.0)
