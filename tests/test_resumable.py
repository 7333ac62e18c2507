"""The training sampler's order and per-sample seeds (attn_zoo/data/resumable.py)."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from attn_zoo.data.resumable import ResumableRandomSampler, SeededSamples


class NoisyImages(Dataset):
    """An index and a draw from torch's generator, as a random crop or flip would draw."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        return torch.tensor([float(index), torch.rand(()).item()])


def _epoch(num_workers: int, seed: int, start: int = 0) -> torch.Tensor:
    sampler = ResumableRandomSampler(NoisyImages())
    sampler.resume_at(seed, start)
    loader = DataLoader(SeededSamples(NoisyImages()), batch_size=4, sampler=sampler, num_workers=num_workers)
    return torch.cat(list(loader))


def test_a_sample_draws_the_same_numbers_in_any_worker_and_from_any_start():
    in_process = _epoch(num_workers=0, seed=11)
    assert torch.equal(_epoch(num_workers=2, seed=11), in_process)
    assert torch.equal(_epoch(num_workers=2, seed=11, start=8), in_process[8:])
    assert not torch.equal(_epoch(num_workers=0, seed=12), in_process)
    assert len(set(in_process[:, 1].tolist())) == len(in_process), "each sample draws its own numbers"


def test_seeding_a_sample_leaves_the_callers_generator_where_it_was():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SeededSamples(NoisyImages())[(5, 123)]
    assert torch.equal(torch.rand(3), expected)


def test_a_plain_index_from_a_distributed_sampler_is_passed_through():
    torch.manual_seed(0)
    first = SeededSamples(NoisyImages())[5]
    torch.manual_seed(0)
    assert torch.equal(first, NoisyImages()[5])


def test_a_checkpoint_restores_the_gpu_generator_of_this_process_only(monkeypatch):
    """The states of every visible GPU were saved and restored together: a run resumed where fewer
    GPUs are visible (trained on a node of 4, resumed on one) failed with an IndexError, and a DDP rank
    got rank 0's device-0 state for devices it never drew from. Now one state, this process's device's."""
    from attn_zoo.callbacks import RandomStateCheckpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every device's state was saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("every device's state was restored"))
    state = RandomStateCheckpoint().state_dict()
    assert [saved.tolist() for saved in state["cuda"]] == [[7]]
    older = {**state, "cuda": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]}
    RandomStateCheckpoint._apply(older)  # an older checkpoint: every device of its machine, device 0 first
    assert [(saved.tolist(), device) for saved, device in restored] == [([1], "cuda")]
