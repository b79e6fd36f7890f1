"""torchvision's create_feature_extractor (FX symbolic tracing) on the DDF-ResNets."""

import pytest
import torch

from conftest import import_test_dependency
from ddf_ops.models import ddf_resnet50

pytestmark = pytest.mark.integration  # torchvision's FX feature extraction, not the kernels (test-fast leaves it out)


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_create_feature_extractor_on_ddf_resnet50(combine):
    feature_extraction = import_test_dependency("torchvision.models.feature_extraction")
    torch.manual_seed(0)
    # zero_init_last=False: every residual branch, and so every DDF layer, shows in the features.
    model = ddf_resnet50(combine, zero_init_last=False).eval()
    nodes = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    extractor = feature_extraction.create_feature_extractor(model, return_nodes=nodes)
    ddf_calls = [n for n in extractor.graph.nodes if n.op == "call_function" and n.target == torch.ops.ddf.ddf.default]
    assert len(ddf_calls) == 16  # one traced op call per bottleneck
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = extractor(x)
        expected, h = {}, model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in nodes:
            h = expected[name] = getattr(model, name)(h)
    assert list(features) == list(nodes)
    for name in nodes:
        torch.testing.assert_close(features[name], expected[name])
    assert [f.shape[1] for f in features.values()] == [256, 512, 1024, 2048]
