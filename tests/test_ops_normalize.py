"""Per-class min-max normalisation: the official formula on every non-flat map (bitwise),
zeros for flat maps, an error naming the map for NaN or an infinity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.ops.normalize import FLAT_RTOL, NonFiniteCamError, flat_maps, minmax_per_class


def _official(cams: torch.Tensor, eps: float) -> torch.Tensor:
    """The formula of the official codes, ``(x - min) / (max(x - min) + eps)``."""
    shifted = cams - cams.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + eps)


@pytest.mark.parametrize("eps", [1e-8, 1e-6, 1e-5])  # extraction, AReAM, ClusterCAM
def test_non_flat_maps_are_the_official_formula_bitwise(eps):
    generator = torch.Generator().manual_seed(0)
    cams = torch.randn(3, 4, 17, 23, generator=generator) * 5
    cams[0, 1] = torch.relu(cams[0, 1])  # a ReLU'd map: minimum 0
    cams[1, 2] = 1e-3 * cams[1, 2] + 40.0  # small relative spread, still far above rtol
    cams[2, 3] = cams[2, 3].abs() * 1e-9  # tiny values, yet not flat
    expected = _official(cams, eps)
    assert torch.equal(minmax_per_class(cams, eps=eps), expected)
    inplace = cams.clone()
    out = minmax_per_class(inplace, eps=eps, inplace=True)
    assert out.data_ptr() == inplace.data_ptr() and torch.equal(inplace, expected)


def test_flat_maps_become_zeros():
    size = (32, 48)
    cams = torch.rand(5, *size, generator=torch.Generator().manual_seed(1))
    # The case: a constant 0.7 patch-grid map upsampled bilinearly, constant up to
    # float rounding; the official formula stretches that rounding to the full range.
    cams[0] = F.interpolate(torch.full((1, 1, 4, 6), 0.7), size=size, mode="bilinear")[0, 0]
    assert cams[0].max() > cams[0].min()
    assert (_official(cams[:1], 1e-8) > 0.3).float().mean() > 0.9
    cams[1] = 0.0  # empty (the official formula gives 0 too)
    cams[2] = 3.0 * (1 + 1e-6 * torch.rand(size))  # rounding-level noise on a constant
    cams[3] = -2.5 + 1e-5 * torch.rand(size)  # negative magnitude, relative spread < 1e-4
    cams[4] = 1e-20 * torch.rand(size)  # denormal-level values: the absolute floor
    out = minmax_per_class(cams)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(minmax_per_class(cams.clone(), inplace=True), torch.zeros_like(out))


def test_flat_rule_at_its_tolerance():
    # Magnitude 16: flat iff the spread is at most about 1.6e-3 (exact binary spreads).
    low = torch.tensor(16.0)
    assert flat_maps(low, low + 2.0**-10, torch.tensor(2.0**-10))  # 9.8e-4: flat
    assert not flat_maps(low, low + 2.0**-9, torch.tensor(2.0**-9))  # 2.0e-3: not flat
    assert flat_maps(torch.tensor(0.0), torch.tensor(1e-13), torch.tensor(1e-13))  # floor
    # A map just above the tolerance keeps its full range.
    cams = torch.full((1, 4, 4), 16.0)
    cams[0, 0, 0] = 16.0 + 2.0**-9
    out = minmax_per_class(cams)
    assert out.max() == pytest.approx(1.0, abs=1e-4) and out.min() == 0
    assert FLAT_RTOL == 1e-4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_map_is_named_by_its_indices(bad):
    cams = torch.rand(2, 3, 4, 5)
    cams[1, 2, 3, 0] = bad
    cams[1, 1, 0, 0] = bad  # the first one in index order is named
    before = cams.clone()
    with pytest.raises(NonFiniteCamError, match=r"index \(1, 1\)") as err:
        minmax_per_class(cams, inplace=True)
    assert err.value.index == (1, 1) and isinstance(err.value, ValueError)
    assert torch.equal(cams.nan_to_num(), before.nan_to_num())  # untouched
