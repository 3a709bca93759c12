from __future__ import annotations

import pytest
import torch
from torch import nn

from e3sfc.models import available_models, build_model, num_params


@pytest.mark.parametrize("name", [m for m in available_models() if m not in ("textbag", "transformer")])
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_every_model_builds_and_runs(name, shape, classes):
    m = build_model(name, shape, classes, seed=0)
    out = m(torch.randn(2, *shape))
    assert out.shape == (2, classes)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


def test_model_too_small_inputs_give_a_one_line_config_error():
    from e3sfc.errors import ConfigError

    # 8x8 reaches the ConvNet's fourth block at 1x1, where its instance norm has one value
    with pytest.raises(ConfigError, match=r"--model: 'convnet-fast' cannot take inputs of shape \(1, 8, 8\)"):
        build_model("convnet-fast", (1, 8, 8), 10, seed=0)


def test_mlp_parameter_count_matches_design():
    assert num_params(build_model("mlp", (1, 28, 28), 10, seed=0)) == 199_210


def test_quickcnn_is_flowers_quickstart_net():
    """Flower's quickstart-pytorch CNN: 62,006 parameters at 3x32x32 with 10 classes (its README's count);
    16 * 5 * 5 features reach the first linear layer."""
    m = build_model("quickcnn", (3, 32, 32), 10, seed=0)
    assert num_params(m) == 62_006
    assert m.classifier[0].in_features == 400
    assert [type(x).__name__ for x in m.features] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
                                                       "Flatten"]


def test_seeded_init_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = build_model("lenet", (1, 28, 28), 10, seed=5)
    b = build_model("lenet", (1, 28, 28), 10, seed=5)
    c = build_model("lenet", (1, 28, 28), 10, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_convnet_pooling_is_avg_pool_2x2():
    from e3sfc.models.convnet import AvgPool2x2

    for shape in [(3, 32, 28, 28), (2, 5, 7, 7), (1, 4, 3, 3)]:  # odd sizes: floor mode, like nn.AvgPool2d(2)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
        ours, ref = AvgPool2x2()(x), torch.nn.AvgPool2d(2)(x)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        w = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0],
                                   torch.autograd.grad((ref * w).sum(), x)[0], rtol=1e-12, atol=1e-12)
    assert not list(AvgPool2x2().parameters())
