"""k-means' squared distances against the definition (SPCL's clustering as a whole: test_spcl.py)."""

import torch

from mpcl.methods.clustering import _sq_dist


def test_squared_distances_of_every_point_to_every_centroid():
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4], [3.0, -1.0]])
    c = torch.tensor([[0.3, 0.4], [1.0, 1.0]])
    want = [[sum((a - b) ** 2 for a, b in zip(p, q)) for q in c.tolist()] for p in x.tolist()]
    assert want[1][0] == 0.0 and want[0][0] < 1          # a point on a centroid, one near it
    torch.testing.assert_close(_sq_dist(x, c), torch.tensor(want), rtol=1e-6, atol=1e-6)
