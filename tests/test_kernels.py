"""networks/kernels.py: Sobel operators against hand-computed values, random kernels, and the
convolution output-size formula against what conv2d really produces."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from networks.kernels import apply_kernels, conv_output_size, random_kernels, sobel, to_grayscale


def test_sobel_on_a_known_image_matches_the_hand_computed_result():
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).view(1, 1, 3, 3)
    response = sobel(image)
    # centre: Gx = (3 - 1) + 2 (6 - 4) + (9 - 7) = 8,  Gy = (7 + 2*8 + 9) - (1 + 2*2 + 3) = 24
    assert response.gx[0, 0, 1, 1] == 8 and response.gy[0, 0, 1, 1] == 24
    assert response.magnitude[0, 0, 1, 1] == pytest.approx(math.sqrt(8**2 + 24**2))
    assert response.direction[0, 0, 1, 1] == pytest.approx(math.atan2(24, 8))
    # top-left corner, zero padding: neighbourhood [[0,0,0],[0,1,2],[0,4,5]]
    # Gx = 2*2 + 5 = 9,  Gy = 2*4 + 5 = 13
    assert response.gx[0, 0, 0, 0] == 9 and response.gy[0, 0, 0, 0] == 13


def test_sobel_finds_a_vertical_edge_and_only_that():
    image = torch.zeros(1, 1, 5, 6)
    image[..., 3:] = 1.0  # dark left half, bright right half: an edge between columns 2 and 3
    response = sobel(image)
    interior_gx = response.gx[0, 0, 1:-1]
    # columns 2 and 3 straddle the edge: (1 + 2 + 1) * (1 - 0) = 4; flat regions give 0
    assert interior_gx.tolist() == [[0, 0, 4, 4, 0, -4]] * 3  # last column: zero padding beyond the bright side
    assert response.gy[0, 0, 1:-1, :-1].abs().max() == 0
    assert response.direction[0, 0, 2, 2] == 0  # gradient points right (+x)


def test_grey_conversion_weighs_colours_like_the_eye():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    assert torch.allclose(to_grayscale(red), torch.full((1, 1, 2, 2), 0.299))


def test_output_size_formula_matches_conv2d():
    checked = 0
    for size, kernel, stride, padding, dilation in itertools.product(
        [7, 28, 32], [1, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2]
    ):
        if dilation * (kernel - 1) + 1 > size + 2 * padding:
            continue
        weight = torch.zeros(1, 1, kernel, kernel)
        out = F.conv2d(torch.zeros(1, 1, size, size), weight, None, stride, padding, dilation)
        assert out.shape[-1] == conv_output_size(size, kernel, stride, padding, dilation), (size, kernel, stride)
        checked += 1
    assert checked > 150


def test_a_kernel_larger_than_the_input_is_explained():
    with pytest.raises(CnnlabError, match="spans 7 pixels"):
        conv_output_size(4, 7, padding=1)
    with pytest.raises(CnnlabError, match="stride"):
        conv_output_size(28, 3, stride=0)


def test_random_kernels_are_reproducible_unit_norm_and_seed_dependent():
    a, b, c = random_kernels(4, 5, seed=1), random_kernels(4, 5, seed=1), random_kernels(4, 5, seed=2)
    assert a.shape == (4, 5, 5) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.flatten(1).norm(dim=1), torch.ones(4))


def test_apply_kernels_has_the_shape_the_formula_gives():
    images = torch.rand(2, 3, 28, 28)
    out = apply_kernels(images, random_kernels(4, 5), stride=2, padding=2)
    assert out.shape == (2, 4, 14, 14)
    # a kernel with a single 1 in the centre reproduces the grey image
    identity = torch.zeros(1, 3, 3)
    identity[0, 1, 1] = 1.0
    assert torch.allclose(apply_kernels(images, identity, padding=1), to_grayscale(images), atol=1e-6)
