"""Numerical checks of the meta-gradient and ES estimators on a quadratic meta-objective.

The learned optimizer here is plain gradient descent with one learned log learning rate per
coordinate of a deterministic quadratic, so the meta-loss of a truncation is a closed-form function
of theta whose exact gradient ``jax.grad`` gives.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import full_es, make_meta_trainer
from metaopt.meta.horizons import sample_horizon
from metaopt.meta import meta_loss
from metaopt.meta.meta_loss import DEFAULT_MAX_META_LOSS
from metaopt.mup import ParamMeta

K = 4  # truncation_length
CURVATURE = (0.5, 1.0, 2.0, 4.0)
THETA = {"log_lr": jnp.log(jnp.asarray([0.3, 0.2, 0.1, 0.05], jnp.float32))}


@dataclasses.dataclass(frozen=True)
class Quadratic:
    """0.5 * sum(a * w^2) from w = 1; the loss (and so the gradient) turns NaN once any |w| > 100."""

    curvature: tuple = CURVATURE

    def init(self, key):
        return {"w": jnp.ones((len(self.curvature),), jnp.float32)}

    def batch(self, key, step):
        return {"step": step}

    def loss(self, params, batch):
        value = 0.5 * jnp.sum(jnp.asarray(self.curvature) * params["w"] ** 2)
        # Multiplicative, so the gradient and then the parameters become NaN too.
        return value * jnp.where(jnp.any(jnp.abs(params["w"]) > 100.0), jnp.nan, 1.0)

    def eval_loss(self, params):
        return 0.5 * jnp.sum(jnp.asarray(self.curvature) * params["w"] ** 2)

    def normalize_loss(self, loss):
        return loss

    @property
    def param_meta(self):
        return {"w": ParamMeta("bias", 1, len(self.curvature))}

    @property
    def num_params(self):
        return len(self.curvature)

    @property
    def flops_per_step(self):
        return 6.0 * len(self.curvature)


class _NoState(NamedTuple):
    pass


@dataclasses.dataclass(frozen=True)
class LogLR(LearnedOptimizer):
    """Gradient descent with a learned log learning rate per coordinate."""

    kind = "test_log_lr"
    dim: int = len(CURVATURE)

    def init(self, key):
        return {"log_lr": jnp.full((self.dim,), jnp.log(0.1), jnp.float32)}

    def transform(self, theta, num_steps, **kwargs):
        def update(updates, state, params=None, **extra):
            return jax.tree.map(lambda g: -jnp.exp(theta["log_lr"]) * g, updates), state

        return optax.GradientTransformationExtraArgs(lambda params: _NoState(), update)


def truncation_meta_loss(theta, index, detach_history=False):
    """Mean post-step loss over truncation ``index`` (steps index*K .. index*K + K - 1) from w = 1."""
    a = jnp.asarray(CURVATURE)
    lr = jnp.exp(theta["log_lr"])
    w = jnp.ones_like(a)
    for _ in range(index * K):
        w = w - lr * a * w
    if detach_history:
        w = jax.lax.stop_gradient(w)
    losses = []
    for _ in range(K):
        w = w - lr * a * w
        losses.append(0.5 * jnp.sum(a * w ** 2))
    return jnp.mean(jnp.stack(losses))


def whole_run_meta_loss(theta, num_steps):
    a = jnp.asarray(CURVATURE)
    lr = jnp.exp(theta["log_lr"])
    w = jnp.ones_like(a)
    losses = []
    for _ in range(num_steps):
        w = w - lr * a * w
        losses.append(0.5 * jnp.sum(a * w ** 2))
    return jnp.mean(jnp.stack(losses))


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def cosine(a, b):
    a, b = flat(a), flat(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


TASK = Quadratic()
LOPT = LogLR()
# Horizon of two truncations: the second one's gradient flows through the first.
SETTINGS = dict(num_tasks=64, truncation_length=K, min_horizon=2 * K, max_horizon=2 * K,
                horizon_sampling="constant", num_perturbations=4, sigma=0.01)
EXACT = {index: jax.grad(truncation_meta_loss)(THETA, index) for index in (0, 1)}
DETACHED = {index: jax.grad(truncation_meta_loss)(THETA, index, True) for index in (0, 1)}


_TRAINERS = {}


def trainer_and_step(name):
    """One trainer and one compiled step per estimator, shared by the tests below.

    The outer optimizer is SGD with its learning rate in the state: at -1 the step adds the
    estimate to theta, which exposes it; at a positive rate the step is ordinary meta-training.
    """
    if name not in _TRAINERS:
        trainer = make_meta_trainer(name, LOPT, [TASK], outer_optimizer=optax.inject_hyperparams(optax.sgd)(
            learning_rate=-1.0), **SETTINGS)
        _TRAINERS[name] = trainer, jax.jit(trainer.step, static_argnums=2)
    return _TRAINERS[name]


def with_outer_learning_rate(state, learning_rate, theta=THETA):
    outer = state.outer_state
    hyperparams = dict(outer.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
    return state._replace(theta=theta, outer_state=outer._replace(hyperparams=hyperparams))


def estimate(step, state, key):
    """(grad, state, metrics): the estimate at THETA, read off a step with outer learning rate -1."""
    state, metrics = step(with_outer_learning_rate(state, -1.0), key, 0)
    return jax.tree.map(jnp.subtract, state.theta, THETA), state, metrics


def positions(state, members_per_task):
    """Truncation index (0 or 1) of each task slot's run."""
    steps = np.asarray(state.estimator_states[0].runs.inner.step)[::members_per_task]
    return steps // K


def expected(reference, index_of_slot):
    return jax.tree.map(lambda g0, g1: np.mean([g1 if i else g0 for i in index_of_slot], axis=0),
                        reference[0], reference[1])


def average_estimates(estimator_name, num_estimates):
    """Runs ``num_estimates`` estimates at a fixed theta; returns their mean and the mean exact
    and detached references at the positions the runs were at."""
    trainer, step = trainer_and_step(estimator_name)
    state = trainer.init(jax.random.key(0), THETA)
    grads, exact, detached = [], [], []
    members = trainer.estimator.members_per_task
    for i in range(num_estimates):
        where = positions(state, members)
        exact.append(expected(EXACT, where))
        detached.append(expected(DETACHED, where))
        grad, state, metrics = estimate(step, state, jax.random.key(100 + i))
        grads.append(grad)
        assert np.isfinite(float(metrics["meta_loss"]))
    mean = lambda trees: jax.tree.map(lambda *xs: np.mean(xs, axis=0), *trees)
    return mean(grads), mean(exact), mean(detached)


def rel_error(a, b):
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def test_tbptt_equals_exact_truncation_gradient():
    trainer, step = trainer_and_step("tbptt")
    state = trainer.init(jax.random.key(0), THETA)
    # All runs start at step 0: the estimate is the exact gradient of the first truncation.
    assert np.all(positions(state, 1) == 0)
    grad, state, metrics = estimate(step, state, jax.random.key(1))
    np.testing.assert_allclose(flat(grad), flat(EXACT[0]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(flat(EXACT[0])), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(truncation_meta_loss(THETA, 0)), rtol=1e-5)
    assert int(metrics["inner_steps"]) == 64 * K
    # Staggered: some runs restarted, the others continue into their second truncation.
    where = positions(state, 1)
    assert 0 < where.sum() < len(where)
    grad, _, _ = estimate(step, state, jax.random.key(2))
    np.testing.assert_allclose(flat(grad), flat(expected(DETACHED, where)), rtol=1e-4, atol=1e-6)
    # The carried state is detached, so TBPTT misses the history's share of the gradient.
    assert rel_error(expected(DETACHED, where), expected(EXACT, where)) > 0.2


def test_log_scale_maps_chance_to_one_and_solved_to_zero():
    worst = jnp.float32(1.5)
    values = jnp.asarray([1.0, 1e-3, 1e-6, 1e-9, 0.0, 1.2, 1.5], jnp.float32)
    scaled = np.asarray(meta_loss.scaled(values, "log", worst))
    np.testing.assert_allclose(scaled[:5], [1.0, 0.5, 0.0, 0.0, 0.0], atol=1e-6)
    assert 1.0 < scaled[5] < 1.5 and scaled[6] == 1.5  # above chance stays below a diverged run
    np.testing.assert_array_equal(np.asarray(meta_loss.scaled(values, "linear", worst)), np.asarray(values))


def test_tbptt_on_the_log_scale_equals_the_exact_gradient():
    def log_meta_loss(theta):
        a, lr = jnp.asarray(CURVATURE), jnp.exp(theta["log_lr"])
        w, losses = jnp.ones_like(a), []
        for _ in range(K):
            w = w - lr * a * w
            losses.append(1.0 + jnp.log10(0.5 * jnp.sum(a * w ** 2)) / meta_loss.LOG_DECADES)
        return jnp.mean(jnp.stack(losses))

    settings = dict(SETTINGS, meta_loss_scale="log")
    trainer = make_meta_trainer("tbptt", LOPT, [TASK], outer_optimizer=optax.inject_hyperparams(optax.sgd)(
        learning_rate=-1.0), **settings)
    state = trainer.init(jax.random.key(0), THETA)
    grad, _, metrics = estimate(jax.jit(trainer.step, static_argnums=2), state, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(log_meta_loss(THETA)), rtol=1e-5)
    np.testing.assert_allclose(flat(grad), flat(jax.grad(log_meta_loss)(THETA)), rtol=1e-4, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class HeldOutQuadratic(Quadratic):
    """The quadratic whose held-out loss weighs the coordinates in the reverse order."""

    def eval_loss(self, params):
        return 0.5 * jnp.sum(jnp.asarray(self.curvature[::-1]) * params["w"] ** 2)


@pytest.mark.parametrize("reduction", ["mean", "final"])
def test_tbptt_on_the_mixed_meta_loss_equals_the_exact_gradient(reduction):
    a, weight = jnp.asarray(CURVATURE), 0.75

    def terms(theta):
        """The (training, held-out) terms of the log-scale meta-loss of the first truncation."""
        def term(losses):
            logged = [1.0 + jnp.log10(x) / meta_loss.LOG_DECADES for x in losses]
            return jnp.mean(jnp.stack(logged if reduction == "mean" else logged[-1:]))

        lr, w, train, held_out = jnp.exp(theta["log_lr"]), jnp.ones_like(a), [], []
        for _ in range(K):
            w = w - lr * a * w
            train.append(0.5 * jnp.sum(a * w ** 2))
            held_out.append(0.5 * jnp.sum(a[::-1] * w ** 2))
        return term(train), term(held_out)

    def mixed_meta_loss(theta):
        train, held_out = terms(theta)
        return (1.0 - weight) * train + weight * held_out

    settings = dict(SETTINGS, meta_loss="mixed", meta_loss_eval_weight=weight, meta_loss_scale="log",
                    meta_loss_reduction=reduction)
    trainer = make_meta_trainer("tbptt", LOPT, [HeldOutQuadratic()], outer_optimizer=optax.inject_hyperparams(
        optax.sgd)(learning_rate=-1.0), **settings)
    state = trainer.init(jax.random.key(0), THETA)
    grad, _, metrics = estimate(jax.jit(trainer.step, static_argnums=2), state, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(mixed_meta_loss(THETA)), rtol=1e-5)
    np.testing.assert_allclose(flat(grad), flat(jax.grad(mixed_meta_loss)(THETA)), rtol=1e-4, atol=1e-6)
    # the two terms differ on this task, so the value above is neither of them alone
    assert min(abs(float(t) - float(metrics["meta_loss"])) for t in terms(THETA)) > 1e-3


def test_pes_is_unbiased_over_the_horizon():
    grad, exact, detached = average_estimates("pes", 12)
    assert cosine(grad, exact) > 0.95
    assert rel_error(grad, exact) < 0.2
    # and closer to the full gradient than to the truncated one
    assert rel_error(grad, exact) < rel_error(grad, detached)


def test_truncated_es_matches_truncated_gradient_in_expectation():
    grad, exact, detached = average_estimates("truncated_es", 6)
    assert cosine(grad, detached) > 0.95
    assert rel_error(grad, detached) < 0.2
    assert rel_error(grad, detached) < rel_error(grad, exact)


def test_es_update_follows_the_whole_run_gradient():
    num_steps = 2 * K
    trainer = make_meta_trainer("es", LOPT, [TASK], strategy="open_es", population_size=256, sigma=0.01,
                                num_steps=num_steps, fitness="mean", optimizer="sgd", learning_rate=1e-3)
    state = trainer.init(jax.random.key(0), THETA)
    new_state, metrics = jax.jit(trainer.step, static_argnums=2)(state, jax.random.key(1), 0)
    step = jax.tree.map(jnp.subtract, trainer.theta(new_state), THETA)
    grad = jax.grad(whole_run_meta_loss)(THETA, num_steps)
    assert cosine(step, jax.tree.map(jnp.negative, grad)) > 0.9
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(whole_run_meta_loss(THETA, num_steps)),
                               rtol=1e-2)
    assert int(metrics["inner_steps"]) == 256 * num_steps


def test_pairwise_fitness_shaping_ranks_within_pairs():
    fitness = jnp.asarray([1.0, 5.0, 2.0, 3.0, 0.5, 2.0])
    shaped = full_es.pairwise_fitness_shaping_fn(None, fitness, None, None)
    np.testing.assert_array_equal(np.asarray(shaped), [-0.5, 0.5, 0.0, 0.5, -0.5, 0.0])


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_nan_runs_leave_theta_and_meta_loss_finite(estimator):
    # A learning rate of 0.75 on the stiffest coordinate doubles |w| every step: runs cross the NaN
    # threshold in their second truncation, so once the runs are staggered only some diverge.
    theta = {"log_lr": THETA["log_lr"].at[3].set(jnp.log(0.75))}
    trainer, step = trainer_and_step(estimator)
    state = with_outer_learning_rate(trainer.init(jax.random.key(0), theta), 1e-4, theta)
    diverged = []
    for i in range(3):
        state, metrics = step(state, jax.random.key(i), 0)
        assert np.isfinite(float(metrics["meta_loss"]))
        assert float(metrics["meta_loss"]) <= DEFAULT_MAX_META_LOSS
        assert np.isfinite(float(metrics["grad_norm"]))
        assert np.all(np.isfinite(flat(trainer.theta(state))))
        diverged.append(float(metrics["diverged"]))
        # diverged runs restart from fresh, finite parameters
        assert np.all(np.isfinite(np.asarray(state.estimator_states[0].runs.inner.params["w"])))
    assert diverged[0] == 0.0 and 0.0 < max(diverged) < 1.0
    # the runs that did not diverge still moved theta
    assert not np.allclose(flat(trainer.theta(state)), flat(theta))


def test_horizons_are_whole_truncations_within_bounds():
    keys = jax.random.split(jax.random.key(0), 512)
    horizons = np.asarray(jax.jit(jax.vmap(lambda k: sample_horizon(k, 100, 1000, "log_uniform", 50)))(
        keys))
    assert np.all(horizons % 50 == 0)
    assert horizons.min() >= 100 and horizons.max() <= 1000
    # log-uniform: as many below the geometric mean as above it
    assert 0.35 < np.mean(horizons < np.sqrt(100 * 1000)) < 0.65
    assert int(sample_horizon(keys[0], 100, 1000, "constant", 50)) == 1000
    assert int(sample_horizon(keys[0], 1, 3, "log_uniform", 50)) == 50


@pytest.mark.parametrize("estimator, kwargs, field", [
    ("sgd", {}, "estimator"),
    ("pes", {"population_size": 8}, "population_size"),
    ("es", {"truncation_length": 8}, "truncation_length"),
    ("pes", {"horizon_sampling": "uniform"}, "horizon_sampling"),
    ("tbptt", {"min_horizon": 10, "max_horizon": 5}, "min_horizon"),
    ("pes", {"meta_loss_reduction": "max"}, "meta_loss_reduction"),
    ("tbptt", {"meta_loss_scale": "sqrt"}, "meta_loss_scale"),
    ("es", {"meta_loss_scale": "exp"}, "meta_loss_scale"),
    ("pes", {"meta_loss": "mixed", "meta_loss_eval_weight": 1.0}, "meta_loss_eval_weight"),
    ("es", {"meta_loss": "both"}, "meta_loss"),
    ("es", {"strategy": "ga"}, "strategy"),
    ("es", {"population_size": 7}, "population_size"),
    ("es", {"strategy": "cma_es", "fitness_shaping": "pairwise"}, "fitness_shaping"),
    ("es", {"fitness": "best"}, "fitness"),
])
def test_bad_settings_raise_value_error_naming_the_field(estimator, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_meta_trainer(estimator, LOPT, [TASK], **kwargs)
