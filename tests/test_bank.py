"""The SimSiam-Multi memory bank: snapshot order across epochs, checkpointing, and the method."""

import torch

from mpcl.config import load
from mpcl.data.batch import Batch
from mpcl.methods import build_method
from mpcl.methods.bank import SnapshotBank
from tests.conftest import tiny_overrides


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
    multi = _method("simsiam_multi", tmp_path, **{"method.bank_mix": 0.5, "method.bank_warmup_epochs": 1})
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
