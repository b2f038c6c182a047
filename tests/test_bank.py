"""The SimSiam-Multi memory bank: snapshot order across epochs, checkpointing, and the method."""

import torch

from mpcl.config.compose import load
from mpcl.data.batch import Batch
from mpcl.losses import symmetric_negative_cosine
from mpcl.methods import build_method
from mpcl.methods.bank import SnapshotBank
from tests.helpers.runs import tiny_overrides


def test_reads_see_the_previous_epoch_only():
    bank = SnapshotBank(4, 2)
    idx = torch.tensor([0, 2])
    bank.write(idx, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    values, valid = bank.read(idx)
    assert values.abs().sum() == 0 and not valid.any()      # epoch 0's writes are not visible yet
    bank.end_epoch(0)
    values, valid = bank.read(torch.tensor([0, 1, 2]))
    assert values.tolist() == [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]]
    assert valid.tolist() == [True, False, True]
    assert int(bank.snapshot_epoch) == 0
    bank.write(torch.tensor([0]), torch.tensor([[5.0, 5.0]]))   # epoch 1 writes
    assert bank.read(torch.tensor([0]))[0].tolist() == [[1.0, 1.0]]  # still epoch 0's snapshot
    bank.end_epoch(1)
    assert bank.read(torch.tensor([0, 2]))[0].tolist() == [[5.0, 5.0], [2.0, 2.0]]
    assert int(bank.snapshot_epoch) == 1


def test_state_dict_round_trip_keeps_both_buffers_and_epoch(tmp_path):
    bank = SnapshotBank(3, 2)
    bank.write(torch.tensor([1]), torch.tensor([[3.0, 4.0]]))
    bank.end_epoch(0)
    bank.write(torch.tensor([2]), torch.tensor([[7.0, 8.0]]))
    torch.save(bank.state_dict(), tmp_path / "b.pt")
    restored = SnapshotBank(3, 2)
    restored.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, restored.state_dict()[name]), name
    restored.end_epoch(1)
    assert restored.read(torch.tensor([1, 2]))[0].tolist() == [[3.0, 4.0], [7.0, 8.0]]


def test_bfloat16_storage():
    bank = SnapshotBank(2, 3, torch.bfloat16)
    bank.write(torch.tensor([0]), torch.tensor([[1.0, 2.0, 3.0]]))
    bank.end_epoch(0)
    assert bank.snapshot.dtype == torch.bfloat16
    assert bank.read(torch.tensor([0]))[0].float().tolist() == [[1.0, 2.0, 3.0]]


def _method(name, tmp_path, **extra):
    cfg = load(None, tiny_overrides(tmp_path, name, **extra))
    torch.manual_seed(0)
    return build_method(cfg, 10, 16)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(8, 3, 32, 32, generator=g) for _ in range(2)]
    return Batch(views, torch.arange(8) * 2, torch.randint(0, 10, (8,), generator=g))


def test_simsiam_multi_at_zero_mix_equals_simsiam(tmp_path):
    plain = _method("simsiam", tmp_path)
    multi = _method("simsiam_multi", tmp_path, **{"method.bank_mix": 0.0, "method.bank_warmup_epochs": 0})
    multi.load_state_dict(plain.state_dict(), strict=False)
    for m in (plain, multi):
        m.eval()                     # BN in eval mode: same forward every time
    batch = _batch()
    multi.training_step(batch, 0)
    multi.on_epoch_end(0)            # the bank now holds epoch 0's z2
    assert torch.equal(plain.training_step(batch, 1).loss, multi.training_step(batch, 1).loss)


def test_simsiam_multi_uses_the_bank_after_warmup(tmp_path):
    multi = _method("simsiam_multi", tmp_path, **{"method.bank_mix": 0.5, "method.bank_warmup_epochs": 0})
    multi.eval()
    batch = _batch()
    before = multi.training_step(batch, 0).loss     # epoch 0: plain targets, writes z2
    multi.on_epoch_end(0)
    stored, valid = multi.bank.read(batch.index)
    assert valid.all()
    with torch.no_grad():
        h = multi.backbone(batch.views[1])
        assert torch.allclose(stored, multi.projector(h), atol=1e-5)   # the bank holds z2
    with torch.no_grad():
        multi.bank.snapshot.mul_(-1)                 # a different snapshot changes the loss ...
    after = multi.training_step(batch, 1).loss
    assert not torch.allclose(before, after)
    multi2 = _method("simsiam_multi", tmp_path, **{"method.bank_mix": 0.5, "method.bank_warmup_epochs": 5})
    multi2.load_state_dict(multi.state_dict())
    multi2.eval()
    assert torch.allclose(multi2.training_step(batch, 1).loss, before)  # ... but not before warmup ends


def _released_neg_cos(p, z):
    """The released simsiam_loss_func as a loop: -mean_i cos(p_i, sg(z_i))."""
    return -sum(p[i] @ z[i].detach() / (p[i].norm() * z[i].detach().norm()) for i in range(p.shape[0])) / p.shape[0]


def test_simsiam_multi_follows_the_released_schedule_and_bank(tmp_path):
    """The released training step, re-derived: ``temp[index] = z2`` for every batch; while
    the epoch counter is <= 50 (here <= W) the targets are plain, after that
    0.5 z2 + 0.5 agg[index] and 0.5 z1 + 0.5 agg[index]; at epoch end agg = temp and the
    counter steps. Loss and gradients of p1, p2 in float64, five epochs, two batches each."""
    W, n_samples, d = 2, 8, 64
    multi = _method("simsiam_multi", tmp_path, **{"method.bank_mix": 0.5, "method.bank_warmup_epochs": W})
    multi.bank = type(multi.bank)(n_samples, d)
    temp = torch.zeros(n_samples, d, dtype=torch.float64)
    agg = None
    g = torch.Generator().manual_seed(5)
    mixed_epochs = []
    for epoch in range(5):
        for index in torch.randperm(n_samples, generator=g).split(4):
            z1, z2, p1, p2 = (torch.randn(4, d, generator=g, dtype=torch.float64) for _ in range(4))
            # released
            rp1, rp2 = p1.clone().requires_grad_(), p2.clone().requires_grad_()
            for i in range(4):
                temp[index[i]] = z2[i]
            if epoch <= W:
                ref = _released_neg_cos(rp1, z2) / 2 + _released_neg_cos(rp2, z1) / 2
            else:
                z3 = torch.stack([z2[i] * 0.5 + agg[index[i]] * 0.5 for i in range(4)])
                z4 = torch.stack([z1[i] * 0.5 + agg[index[i]] * 0.5 for i in range(4)])
                ref = _released_neg_cos(rp1, z3) / 2 + _released_neg_cos(rp2, z4) / 2
            ref.backward()
            # mpcl
            gp1, gp2 = p1.clone().requires_grad_(), p2.clone().requires_grad_()
            batch = Batch([torch.zeros(4, 1)] * 2, index, torch.zeros(4, dtype=torch.long))
            t1, t2 = multi.targets(batch, z1, z2, epoch)
            got = symmetric_negative_cosine(gp1, gp2, t1, t2)
            got.backward()
            assert abs(got.item() - ref.item()) < 1e-6, epoch
            assert torch.allclose(gp1.grad, rp1.grad, atol=1e-6, rtol=0), epoch
            assert torch.allclose(gp2.grad, rp2.grad, atol=1e-6, rtol=0), epoch
        mixed_epochs.append(multi.bank_active(epoch))
        multi.on_epoch_end(epoch)
        agg = temp.clone()
    assert mixed_epochs == [False, False, False, True, True]   # first mixed epoch W + 1


def test_a_new_bank_holds_nothing_and_its_size_is_known():
    """Storage: two (n, d) value buffers of the bank's dtype, two bool masks, one int64 epoch
    (-1: no snapshot yet)."""
    for dtype, itemsize in ((torch.float32, 4), (torch.bfloat16, 2)):
        bank = SnapshotBank(10, 3, dtype)
        assert int(bank.snapshot_epoch) == -1
        assert not bank.read(torch.arange(10))[1].any()
        assert sum(b.nbytes for b in bank.buffers()) == 2 * 10 * 3 * itemsize + 2 * 10 + 8


def test_bank_dtype_sets_the_storage_of_a_multi_stage_method(tmp_path):
    for name in ("simsiam_multi", "simclr_attn_multi"):
        method = _method(name, tmp_path, **{"method.bank_dtype": "bfloat16"})
        assert {b.dtype for b in (method.bank.snapshot, method.bank.pending)} == {torch.bfloat16}
        assert _method(name, tmp_path).bank.snapshot.dtype == torch.float32
