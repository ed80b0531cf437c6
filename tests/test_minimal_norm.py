"""Minimal-norm attacks (FAB, FMN), FAB's projection, Square L2, the AutoAttack cascade and its
fidelity fixes, and the robustness curves they feed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from classrobust.attacks import APGD, FAB, FMN, AutoAttack, MinDist, Square, TemperaturePGD, create_attack
from classrobust.attacks.losses import tempered_ce
from classrobust.attacks.projections import project_onto_hyperplane
from classrobust.attacks.square import l2_pattern, square_fraction
from classrobust.errors import UsageError
from classrobust.results import AttackResult, ClasswiseResult


def robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.fixture(scope="module")
def points(at_fmnist_model, fmnist_test_subset):
    x, y = fmnist_test_subset[torch.arange(0, 600, 5)]
    keep = robust(at_fmnist_model, x, y)
    return x[keep][:60], y[keep][:60]


# -- the projection ----------------------------------------------------------------------------
def _reference_projection(t, w, b, norm):
    """The least-norm step onto w . z = b inside [0, 1]^D by a generic solver (None: infeasible)."""
    d = len(t)
    bounds = list(zip(-t, 1 - t))
    if norm == "l2":
        res = minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, method="SLSQP", bounds=bounds,
                       constraints=[{"type": "eq", "fun": lambda v: w @ (t + v) - b}])
        return np.sqrt(res.fun) if res.success and abs(w @ (t + res.x) - b) < 1e-6 else None
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    res = linprog(np.r_[np.zeros(d), 1], A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0][None],
                  b_eq=[b - w @ t], bounds=bounds + [(0, None)])
    return res.fun if res.success else None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_least_norm_step_inside_the_box(norm):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(40, 15, generator=g, dtype=torch.float64)
    w = torch.randn(40, 15, generator=g, dtype=torch.float64)
    w[0, :5] = 0  # coordinates the hyperplane ignores do not move
    b = (w * t).sum(1) + 2.0 * torch.randn(40, generator=g, dtype=torch.float64)
    d = project_onto_hyperplane(t, w, b, norm)
    assert ((t + d) >= -1e-12).all() and ((t + d) <= 1 + 1e-12).all()
    assert (d[0, :5] == 0).all()
    feasible = 0
    for i in range(len(t)):
        ref = _reference_projection(t[i].numpy(), w[i].numpy(), float(b[i]), norm)
        ours = float(d[i].abs().max() if norm == "linf" else d[i].norm())
        if ref is None:  # out of reach: every moving coordinate at its bound, towards the hyperplane
            gap = float(b[i] - w[i] @ t[i])
            assert abs(float(w[i] @ d[i])) > 0 and np.sign(float(w[i] @ d[i])) == np.sign(gap)
            continue
        feasible += 1
        assert float(w[i] @ (t[i] + d[i])) == pytest.approx(float(b[i]), abs=1e-9)
        assert ours == pytest.approx(ref, abs=1e-6)
    assert feasible >= 20


# -- FAB and FMN -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kw", [(FAB, {"steps": 10}), (FAB, {"steps": 10, "targeted": True, "n_targets": 2}),
                                    (FMN, {"steps": 20}),
                                    (MinDist, {"fab_steps": 10, "n_targets": 2, "rounds": 2, "steps": 3})])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_minimal_norm_distances_are_true_distances_of_fooling_points(at_fmnist_model, points, cls, kw, norm, eps):
    x, y = points[0][:25], points[1][:25]
    attack = cls(at_fmnist_model, eps=eps, norm=norm, **kw)
    x_min, dist = attack.minimal(x, y)
    found = torch.isfinite(dist)
    assert found.sum() >= 15, f"{cls.__name__} found only {int(found.sum())} of 25"
    # each recorded distance is that of the returned point, which fools the model
    torch.testing.assert_close(dist[found], attack.ball.distance(x_min[found], x[found]))
    assert not robust(at_fmnist_model, x_min[found], y[found]).any()
    assert torch.equal(x_min[~found], x[~found])
    assert ((x_min >= 0) & (x_min <= 1)).all()
    # the attack at radius eps: broken exactly where the distance is within eps
    x_adv = attack(x, y)
    assert torch.equal(~robust(at_fmnist_model, x_adv, y), dist <= eps)
    assert (attack.ball.distance(x_adv, x) <= eps + 1e-6).all()


def test_minimal_norm_respects_the_model_and_inputs(tiny_model, tiny_batch):
    x, y = tiny_batch
    x_copy = x.clone()
    tiny_model.train()
    for attack in (FAB(tiny_model, eps=0.1, steps=3), FMN(tiny_model, eps=0.1, steps=3),
                   MinDist(tiny_model, eps=0.1, fab_steps=3, n_targets=2, rounds=1, steps=2)):
        x_min, dist = attack.minimal(x, y)
        assert torch.equal(x, x_copy) and tiny_model.training
        with torch.no_grad():
            wrong = tiny_model.eval()(x).argmax(1) != y
        tiny_model.train()
        assert (dist[wrong] == 0).all()  # a clean error is at distance 0
    assert FAB(tiny_model, eps=0.1).minimal(x[:0], y[:0])[1].shape == (0,)
    with pytest.raises(UsageError, match="beta"):
        FAB(tiny_model, eps=0.1, beta=0)


def test_fab_t_curves_take_every_target_and_only_the_attack_at_eps_stops_early(at_fmnist_model, points):
    # all 60 points: on 20, whether any distance differs depended on the fixture model, which differs
    # with the thread count it was trained at (the assertion failed at one thread)
    x, y = points
    fab = FAB(at_fmnist_model, eps=0.1, steps=8, targeted=True, n_targets=3, mode="best")
    full = fab.minimal(x, y)[1]
    early = fab._guarded(lambda a, b: fab.search(a, b, early_stop=True), x, y, True)[1]
    # the curve's distance is the smallest over all targets; stopping at the first target that
    # breaks a point within eps (AutoAttack's use) leaves larger distances on some points
    assert (full <= early + 1e-7).all() and (full < early - 1e-6).any()
    assert torch.equal(full <= 0.1, early <= 0.1)  # the same verdicts at eps
    # the attack at eps (mode best) is the early-stopping search, judged at eps
    assert torch.equal(robust(at_fmnist_model, fab(x, y), y), early > 0.1)
    last = FAB(at_fmnist_model, eps=0.1, steps=8, targeted=True, n_targets=3, mode="last").minimal(x, y)[1]
    assert torch.equal(full, last)


def test_mindist_tightens_its_fab_t_start_and_says_where_each_distance_came_from(at_fmnist_model, points):
    x, y = points[0][:30], points[1][:30]
    eps = 0.05  # below most points' distance, so the check at eps has work
    kw = dict(eps=eps, fab_steps=20, n_targets=2)
    start = FAB(at_fmnist_model, targeted=True, steps=20, n_targets=2, eps=eps).minimal(x, y)[1]
    x_min, dist, source = MinDist(at_fmnist_model, rounds=3, steps=5, **kw).minimal_with_source(x, y)
    assert len(source) == len(x) and set(source) <= {"clean", "fab-t", "pgd-at-eps", "bisection", "none"}
    # never looser than its own start; the bisection improved some points, and those say so
    assert (dist <= start + 1e-7).all()
    improved = dist < start * 0.999
    assert improved.any()
    assert all(source[i] in ("pgd-at-eps", "bisection") for i in improved.nonzero().flatten().tolist())
    assert torch.equal(torch.tensor([s == "none" for s in source]), torch.isinf(dist))
    # the same search as minimal()
    torch.testing.assert_close(MinDist(at_fmnist_model, rounds=3, steps=5, **kw).minimal(x, y)[1], dist)
    with pytest.raises(UsageError, match="bracket"):
        MinDist(at_fmnist_model, eps=0.1, bracket=1.0)


# -- Square -------------------------------------------------------------------------------------
def test_square_schedule_is_the_references_by_default():
    # not rescaled: halvings after queries 10, 50, 200, ..., ending at p / 128 within 5,000 queries
    assert square_fraction(0.8, 10, 5000) == 0.8
    assert square_fraction(0.8, 11, 5000) == 0.4
    assert square_fraction(0.8, 4999, 5000) == pytest.approx(0.8 / 128)
    assert square_fraction(0.8, 4999, 5000, rescale=True) == pytest.approx(0.8 / 512)
    assert square_fraction(0.8, 50, 1000, rescale=True) == 0.8 / 8  # 50 of 1,000 is 500 of 10,000


def test_l2_pattern_has_unit_norm_and_opposite_halves():
    p = l2_pattern(7)
    assert p.norm() == pytest.approx(1.0)
    assert (p[:3] > 0).all() and (p[3:] < 0).all()
    assert p[1, 3] == p.max()  # the top bump peaks at its centre


def test_square_l2_stays_in_the_ball_and_finds_errors(at_fmnist_model, points):
    x, y = points
    attack = Square(at_fmnist_model, eps=1.5, norm="l2", n_queries=150)
    x_adv = attack(x, y)
    assert (attack.ball.distance(x_adv, x) <= 1.5 + 1e-5).all()
    assert robust(at_fmnist_model, x_adv, y).float().mean() < 0.95
    assert attack.config()["rescale_schedule"] is False


# -- fidelity fixes -------------------------------------------------------------------------------
def test_temperature_loss_does_not_saturate_on_confident_points():
    logits = torch.tensor([[200.0, 0.0, -5.0, 1.0]], requires_grad=True)  # margin 199: CE's gradient is 0
    y = torch.tensor([0])
    (plain,) = torch.autograd.grad(nn.functional.cross_entropy(logits / 0.4, y), logits)
    assert (plain == 0).all()
    (ours,) = torch.autograd.grad(tempered_ce(0.4)(logits, y).sum(), logits)
    assert ours[0, 0] < 0 and (ours[0, 1:] > 0).all()
    # where fp32 does not underflow, the two gradients are positive multiples of each other
    z = torch.randn(16, 10, requires_grad=True)
    yy = torch.randint(0, 10, (16,))
    (g_ce,) = torch.autograd.grad(nn.functional.cross_entropy(z / 0.4, yy, reduction="sum"), z)
    (g_new,) = torch.autograd.grad(tempered_ce(0.4)(z, yy).sum(), z)
    ratio = (g_ce / g_new)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=0)
    assert (ratio > 0).all()


def test_temperature_pgd_moves_a_point_plain_pgd_cannot():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = 60.0  # class 0 wins by a huge margin everywhere in the box
        model[1].weight[1, :8] = 1.0
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    from classrobust.attacks import PGD

    # plain PGD on cross-entropy: the softmax is saturated in fp32, the gradient exactly zero, no step
    stuck = PGD(model, eps=0.1, steps=3, random_start=False, mode="last")(x, y)
    assert torch.equal(stuck, x)
    moved = TemperaturePGD(model, eps=0.1, steps=3, temperature=0.4, random_start=False)(x, y)
    assert (moved - x).abs().max() > 0


def test_apgd_mode_last_returns_a_fooling_iterate_when_it_found_one(at_fmnist_model, points):
    x, y = points
    best = robust(at_fmnist_model, APGD(at_fmnist_model, eps=0.1, steps=10, mode="best")(x, y), y)
    last = robust(at_fmnist_model, APGD(at_fmnist_model, eps=0.1, steps=10, mode="last")(x, y), y)
    # every point fooled at some iterate of the full run is returned fooled
    assert not (~best & last).any()


def test_apgd_after_halving_keeps_momentum_from_the_best_point():
    from classrobust.attacks.apgd import _APGDState

    x0 = torch.zeros(2, 1, 2, 2)
    s = _APGDState.start(x0, torch.zeros(2, dtype=torch.long), None, x0 + 0.1, 0.2)
    s.g = s.g_best = torch.zeros_like(x0)
    s.loss = s.loss_best = torch.tensor([0.0, 0.0])
    s.loss_best_ck = torch.tensor([-1.0, -1.0])
    s.record(x0 + 0.3, torch.zeros_like(x0), torch.tensor([1.0, -1.0]))  # sample 0 improves, 1 does not
    s.checkpoint(min_successes=0.5)  # sample 1: no loss increase -> halved, back to its best point
    assert s.eta.tolist() == pytest.approx([0.2, 0.1])
    assert torch.equal(s.x[1], x0[1] + 0.1)  # best point
    assert torch.equal(s.x_prev[1], x0[1] + 0.1)  # x_prev untouched (x_best - x_prev is the next momentum)
    # the reference halves at exactly rho * interval successes too ("at most", not "fewer than")
    s.succ = torch.tensor([1.0, 3.0])
    s.reduced_last = torch.tensor([True, True])
    s.checkpoint(min_successes=1.0)
    assert s.eta.tolist() == pytest.approx([0.1, 0.1])


# -- AutoAttack ------------------------------------------------------------------------------------
def test_autoattack_standard_members_and_flag(tiny_model):
    aa = AutoAttack(tiny_model, eps=0.1)
    assert list(aa.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa.standard and aa.config()["standard"] is True
    assert aa.attacks["fab-t"].targeted and aa.attacks["fab-t"].n_targets == 9 and aa.attacks["fab-t"].steps == 100
    assert aa.attacks["square"].n_queries == 5000 and not aa.attacks["square"].rescale_schedule
    l2 = AutoAttack(tiny_model, eps=0.5, norm="l2")
    assert list(l2.attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"] and l2.standard
    assert all(a.norm == "l2" for a in l2.attacks.values())
    assert list(AutoAttack(tiny_model, eps=0.1, version="rand").attacks) == ["apgd-ce", "apgd-dlr"]
    assert AutoAttack(tiny_model, eps=0.1, version="rand").attacks["apgd-dlr"].eot == 20
    for kwargs, reason in (({"version": "fast"}, "version fast"), ({"n_queries": 100}, "n_queries 100"),
                           ({"precision": "bf16"}, "precision bf16"), ({"rescale_schedule": True}, "rescale_schedule")):
        aa = AutoAttack(tiny_model, eps=0.1, **kwargs)
        assert not aa.standard and any(reason in d for d in aa.deviations), kwargs
    assert AutoAttack(tiny_model, eps=0.1, steps=100).standard  # the reference's own value is still standard


def test_autoattack_with_fab_t_is_the_per_point_worst_case(at_fmnist_model, points):
    x, y = points[0][:40], points[1][:40]
    aa = AutoAttack(at_fmnist_model, eps=0.1, steps=8, n_targets=2, n_queries=60, seed=2)
    robust_aa = robust(at_fmnist_model, aa(x, y), y)
    members = [robust(at_fmnist_model, atk(x, y), y) for atk in aa.attacks.values()]
    assert torch.equal(robust_aa, torch.stack(members).all(dim=0))
    # where the time goes: each member's points are those every earlier member failed on
    record = aa.cascade(x, y)
    expected = len(x)
    for i, name in enumerate(aa.attacks):
        assert record.points[name] == expected and record.seconds[name] >= 0
        expected -= int((record.breaker == i).sum())
    assert sum(record.seconds.values()) > 0


def test_autoattack_member_attribution_in_the_results(at_fmnist_model, points, tmp_path):
    """evaluate_classwise records which member broke each point and each member's seconds and points;
    the record survives save/load and a resumed evaluation (from its kept batches)."""
    from classrobust.evaluate import evaluate_classwise
    from classrobust.results import ClasswiseResult

    x, y = points[0][:40], points[1][:40]
    loader = [(x[:20], y[:20]), (x[20:], y[20:])]
    attacks = {"autoattack": AutoAttack(at_fmnist_model, eps=0.1, steps=8, n_targets=2, n_queries=60, seed=2)}
    classes = [str(k) for k in range(10)]
    result = evaluate_classwise(at_fmnist_model, loader, attacks, classes=classes, progress=False,
                                resume_dir=tmp_path / "cache")
    aa, clean = result.attacks["autoattack"], result.attacks["clean"]
    assert aa.members == ["apgd-ce", "apgd-t", "fab-t", "square"]
    broken = (clean.predictions == y.numpy()) & (aa.predictions != y.numpy())
    assert np.array_equal(aa.breakers >= 0, broken)  # a member is named exactly where a correct point fell
    assert aa.member_stats["apgd-ce"]["points"] == int((clean.predictions == y.numpy()).sum())
    assert sum(v.sum() for v in aa.member_breaks_per_class().values()) == broken.sum()
    result.save(tmp_path / "eval")
    loaded = ClasswiseResult.load(tmp_path / "eval").attacks["autoattack"]
    assert np.array_equal(loaded.breakers, aa.breakers) and loaded.member_stats == aa.member_stats
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["attacks"]["autoattack"]["members"]
    assert sum(m["broke"] for m in summary.values()) == broken.sum()
    from classrobust.report import build_report

    build_report(tmp_path / "eval")  # the report shows it per class, with each member's time
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "autoattack: what each member broke" in page and "apgd-t" in page
    import pandas as pd

    members = pd.read_csv(next((tmp_path / "eval").rglob("members_autoattack.csv")))
    assert members.set_index("class").loc["all"].sum() == broken.sum()
    again = evaluate_classwise(at_fmnist_model, loader, attacks, classes=classes, progress=False,
                               resume_dir=tmp_path / "cache").attacks["autoattack"]  # from the kept batches
    assert np.array_equal(again.breakers, aa.breakers) and again.member_stats == aa.member_stats


# -- records, curves ---------------------------------------------------------------------------------
def _result_with_distances():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    dist = np.array([0.0, 0.05, 0.2, np.inf, 0.1, 0.1, 0.3, 0.5])
    preds = np.where(dist <= 0.1, 1 - labels, labels)
    config = {"attack": "fmn", "eps": 0.1, "norm": "linf", "mode": "best", "precision": "fp32", "seed": 0}
    clean = AttackResult("clean", labels, np.where(dist == 0, 1 - labels, labels), 2, {"attack": "clean"})
    res = AttackResult("fmn", labels, preds, 2, config, 1.0, dist)
    return ClasswiseResult(["a", "b"], np.arange(8), labels, {"clean": clean, "fmn": res}, {"eps": 0.1})


def test_curves_and_median_distances():
    result = _result_with_distances()
    curves = result.curve_table()
    grid = curves[(curves["kind"] == "grid") & (curves["class_name"] == "a")]
    at_eps = grid[np.isclose(grid["distance"], 0.1)]["robust_accuracy"].item()
    assert at_eps == 0.5  # class a: 0 and 0.05 are within eps, 0.2 and inf are not
    assert at_eps == 1 - (result.attacks["fmn"].predictions[:4] != 0).mean()  # agrees with the eps column
    steps = curves[(curves["kind"] == "step") & (curves["class_name"] == "b")]
    assert steps["distance"].tolist() == [0.0, 0.1, 0.3, 0.5]
    assert steps["robust_accuracy"].tolist() == [1.0, 0.5, 0.25, 0.0]
    med = result.distance_table().set_index("class_name")
    assert med.loc["a", "median"] == pytest.approx(0.125) and med.loc["b", "never_broken"] == 0
    assert med.loc["all", "n"] == 8 and med.loc["a", "ci_low"] <= 0.125 <= med.loc["a", "ci_high"]


def test_distances_survive_save_and_load_and_curves_are_written(tmp_path):
    result = _result_with_distances()
    result.save(tmp_path / "e")
    back = ClasswiseResult.load(tmp_path / "e")
    np.testing.assert_array_equal(back.attacks["fmn"].distances, result.attacks["fmn"].distances)
    assert back.attacks["clean"].distances is None
    assert (tmp_path / "e" / "curves.csv").is_file() and (tmp_path / "e" / "distances.csv").is_file()
    # a later result without a minimal-norm attack removes the earlier result's curves
    ClasswiseResult(result.classes, result.indices, result.labels, {"clean": result.attacks["clean"]},
                    {}).save(tmp_path / "e")
    assert not (tmp_path / "e" / "curves.csv").exists()


def test_eval_records_distances_for_minimal_norm_attacks(at_fmnist_model, points):
    from classrobust.evaluate import evaluate_classwise

    x, y = points[0][:30], points[1][:30]
    attacks = {"fmn": create_attack("fmn", at_fmnist_model, eps=0.1, steps=15), "pgd": create_attack(
        "pgd", at_fmnist_model, eps=0.1, steps=5)}
    res = evaluate_classwise(at_fmnist_model, [(x, y)], attacks, classes=[str(i) for i in range(10)], progress=False)
    dist = res.attacks["fmn"].distances
    assert dist.shape == (30,) and res.attacks["pgd"].distances is None
    fooled = res.attacks["fmn"].predictions != res.labels
    np.testing.assert_array_equal(fooled, dist <= 0.1)


def test_cli_marks_a_non_standard_autoattack_everywhere(trained_run, capsys):
    import json

    from conftest import run

    code, out, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--limit", "10", "--no-progress",
                          "--no-report", "--attacks", "autoattack:version=fast,steps=2,n_targets=1"], capsys)
    assert code == 0, err
    assert "NOT standard AutoAttack (version fast, steps 2, n_targets 1)" in out
    summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    config = summary["attacks"]["autoattack"]["config"]
    assert config["standard"] is False and config["deviations"] == ["version fast", "steps 2", "n_targets 1"]
    per_class = (trained_run / "eval" / "per_class.csv").read_text()
    assert "NOT standard AutoAttack" in per_class
    # the global --steps does not reach AutoAttack's members
    code, _, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--limit", "10", "--no-progress",
                        "--no-report", "--attacks", "pgd,autoattack", "--steps", "3"], capsys)
    assert code == 2 and "autoattack" in err and "--steps" in err


def test_curves_figure_with_many_classes_draws_the_extremes_only():
    from classrobust.report.figures import robustness_curves

    k = 100
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), 5)
    dist = rng.exponential(0.1 * (1 + np.arange(k) / k), size=(5, k)).T.ravel()
    config = {"attack": "fmn", "eps": 0.1, "norm": "linf"}
    res = AttackResult("fmn", labels, np.where(dist <= 0.1, (labels + 1) % k, labels), k, config, 0.0, dist)
    result = ClasswiseResult([f"c{i}" for i in range(k)], np.arange(len(labels)), labels, {"fmn": res}, {})
    fig = robustness_curves(result.curve_table(), "fmn")
    assert len(fig.axes[0].get_lines()) == 11 + 1  # 5 weakest, 5 strongest, all, and the eps line
