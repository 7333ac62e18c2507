"""The training sampler's order and per-sample seeds (attn_zoo/data/resumable.py)."""
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
