"""Tests of mixnb/distributed.py: BN buffers under DDP (the 2-process torchrun runs and launch.py: test_scale.py)."""

import pytest
import torch


class _TwoRanks:
    """torch.distributed as rank 0 of 2 sees it, rank 1's buffers being 2 - rank 0's: broadcast keeps rank 0's
    values, all_reduce sums the two."""

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def broadcast(self, t: torch.Tensor, src: int) -> None:
        assert src == 0

    def all_reduce(self, t: torch.Tensor) -> None:
        t.copy_(t + (2 - t))


@pytest.mark.parametrize("mode, expect", [("first", 0.5), ("mean", 1.0)])
def test_ddp_buffers_are_rank_0s_with_first(monkeypatch, mode, expect):
    import mixnb.distributed as distributed

    monkeypatch.setattr(distributed, "dist", _TwoRanks())
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    distributed.average_buffers_(bn, running_stats=mode)
    assert bn.running_mean.eq(expect).all()
