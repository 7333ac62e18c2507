"""Which tests skip on a machine without CUDA: those marked ``gpu``, not those whose name or
parameter id merely holds the word (``data.loader=gpu`` runs on the CPU too)."""
import torch

pytest_plugins = ["pytester"]


def test_only_the_gpu_marker_skips_a_test_without_cuda(pytester, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401")
    pytester.makepyfile(test_loaders='''
        import pytest

        @pytest.mark.parametrize("loader", ["cpu", "gpu"])
        def test_every_loader(loader):
            pass

        @pytest.mark.gpu
        def test_cuda_only():
            pass
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=2, skipped=1)
