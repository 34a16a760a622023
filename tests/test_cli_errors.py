"""wsss.cli: bad input is reported by its own message, also from a DataLoader worker."""

import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from wsss.cli import worker_message


class _BadImage(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise ValueError("datasets.toy: image JPEGImages/a.jpg (id 'a') is truncated")


def test_a_worker_error_is_reported_by_its_own_message():
    with pytest.raises(ValueError) as info:
        next(iter(DataLoader(_BadImage(), num_workers=1)))
    assert str(info.value).startswith("Caught ValueError in DataLoader worker process 0.")
    assert worker_message(info.value) == (
        "datasets.toy: image JPEGImages/a.jpg (id 'a') is truncated "
        "(in DataLoader worker process 0)"
    )


def test_other_messages_are_kept_as_they_are():
    from torch._utils import ExceptionWrapper

    try:
        raise ValueError("first line\nValueError: not a traceback")
    except ValueError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1")
    with pytest.raises(ValueError) as info:
        wrapped.reraise()
    assert worker_message(info.value) == (
        "first line\nValueError: not a traceback (in DataLoader worker process 1)"
    )
    assert worker_message(ValueError("plain")) == "plain"
    assert torch  # imported for the DataLoader
