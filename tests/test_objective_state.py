"""The state an objective keeps besides the encoder (`xclr_train.objectives.state`): queue, momentum schedule, EMA
target, predictor, checkpoint round trip; and the graph's positive mask."""

import math

import pytest
import torch

from xclr_train.models import Encoder, ModelConfig
from xclr_train.objectives import Graph, Objective, make_objective
from xclr_train.objectives.state import Queue, ema_update, momentum_at
from xclr_train.targets import graph_positive_rows

GRAPH = Graph(background=0.2, kth_mean=0.3)


def built(name: str, options: dict, seed: int = 0, encoder: Encoder | None = None, k: int | None = 3) -> Objective:
    """The objective with its learner (proj_dim 8, predictor 16 wide), target network and queue."""
    objective = make_objective(name, options, GRAPH)
    objective.build(encoder or Encoder(ModelConfig("convnet", 32, 16, 8)), 8, 16, k, seed, torch.device("cpu"), 1)
    return objective


def test_queue_is_first_in_first_out_and_keeps_the_last_size_entries():
    q = Queue(5, {"z": ((2,), torch.float32), "id": ((), torch.long)}, torch.device("cpu"))
    assert q.entries()["z"].shape == (0, 2)
    pushed = []
    for step in range(4):  # 3 entries a step: 12 in all, the last 5 remain
        ids = torch.arange(3 * step, 3 * step + 3)
        q.push({"z": ids[:, None].float().repeat(1, 2), "id": ids})
        pushed += ids.tolist()
        kept = q.entries()
        assert sorted(kept["id"].tolist()) == pushed[-5:]
        assert (kept["z"][:, 0].long() == kept["id"]).all()  # fields stay aligned
    q.push({"z": torch.zeros(7, 2), "id": torch.arange(100, 107)})  # more than fit: the last 5
    assert sorted(q.entries()["id"].tolist()) == list(range(102, 107))


def test_queue_state_round_trips():
    q = Queue(4, {"z": ((3,), torch.float32)}, torch.device("cpu"))
    q.push({"z": torch.randn(3, 3)})
    other = Queue(4, {"z": ((3,), torch.float32)}, torch.device("cpu"))
    other.load_state_dict(q.state_dict())
    torch.testing.assert_close(other.entries()["z"], q.entries()["z"])
    q.push({"z": torch.ones(2, 3)})
    other.push({"z": torch.ones(2, 3)})
    torch.testing.assert_close(other.entries()["z"], q.entries()["z"])


def test_momentum_schedule_rises_from_base_to_one():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    values = [momentum_at(s, 100, 0.996) for s in range(101)]
    assert values == sorted(values)


def test_ema_update_moves_the_target_by_one_minus_mu():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)


def test_graph_positive_rows_match_a_loop():
    """Positive iff the same caption, or either caption among the other's neighbours (ids < 0 match nothing)."""
    caption_id = torch.tensor([4, 9, 4, 2, 7, 9, 11, 2])
    table = {4: [9, 2, 30], 9: [4, 7, -1], 2: [4, 11, 7], 7: [9, 2, 4], 11: [2, 50, 60]}
    nbr_id = torch.tensor([table[int(c)] for c in caption_id])
    nbr_sim = torch.tensor([0.9, 0.6, float("nan")]).repeat(8, 1)
    nbr_sim[nbr_id >= 0] = 0.5
    rows = torch.tensor([0, 3, 6])
    got = graph_positive_rows(caption_id, nbr_id, nbr_sim, rows)
    for r, a in enumerate(rows.tolist()):
        for b in range(8):
            ca, cb = int(caption_id[a]), int(caption_id[b])
            assert bool(got[r, b]) == (ca == cb or cb in table[ca] or ca in table[cb]), (a, b)


@pytest.mark.parametrize("name", ["moco", "byol", "nnclr", "xclr"])
def test_objective_state_round_trips_through_a_checkpoint_dict(name):
    """Predictor, target network and queue come back equal from state_dict (what --resume relies on)."""
    options = {} if name == "byol" else {"queue_size": 6}
    def build(seed):
        torch.manual_seed(seed)
        return built(name, options, seed)
    a, b = build(0), build(1)
    if a.queue is not None and name == "xclr":
        a.queue.push({"z": torch.randn(4, 8), "caption_id": torch.arange(4), "nbr_id": torch.zeros(4, 3).long(),
                      "nbr_sim": torch.ones(4, 3)})
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"moco": {"target", "queue"}, "byol": {"predictor", "target"},
                                   "nnclr": {"predictor", "queue"}, "xclr": {"queue"}}[name]
    for key, value in a.state_dict().items():
        flat_a = value["data"] if key == "queue" else value
        flat_b = b.state_dict()[key]["data"] if key == "queue" else b.state_dict()[key]
        for k in flat_a:
            torch.testing.assert_close(flat_b[k], flat_a[k], msg=f"{key}.{k}")


def test_moco_and_nnclr_queues_start_full_of_unit_vectors_xclr_empty():
    for name, filled in (("moco", 6), ("nnclr", 6), ("xclr", 0)):
        z = built(name, {"queue_size": 6}).queue.entries()["z"]
        assert len(z) == filled
        assert torch.allclose(z.norm(dim=1), torch.ones(filled))
    assert built("simclr", {}, k=None).queue is None
    assert built("xclr", {}).queue is None  # --queue-size 0, the default


def test_target_network_starts_as_the_encoder_and_has_no_gradient():
    encoder = Encoder(ModelConfig("convnet", 32, 16, 8))
    method = built("byol", {"momentum": 0.9}, encoder=encoder, k=None)
    for t, o in zip(method.target.parameters(), encoder.parameters()):
        assert not t.requires_grad and torch.equal(t, o)
    images = torch.randn(8, 3, 16, 16)
    views = method.views(method.learner, images)
    assert views.p1.shape == views.t1.shape == (4, 8) and not views.t1.requires_grad
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    method.after_step(views, {}, 1, 10)
    mu = momentum_at(1, 10, 0.9)
    assert 0.9 < mu < 1
    for t, o in zip(method.target.parameters(), encoder.parameters()):
        torch.testing.assert_close(t, mu * (o - 1.0) + (1 - mu) * o)
    assert math.isclose(mu, 1 - 0.1 * (math.cos(math.pi / 10) + 1) / 2)
