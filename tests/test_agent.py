"""The agent network: parameter count, sampling vs teacher-forced logits, resets, conv forms, records.

The environment is not used here (it is written concurrently): a toy painter below produces
observations with the same layout (uint8-exact canvases, masks from ``specs.action_mask``).
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spiral.envs import specs
from spiral.learner import (FIRST, LAST, MID, Agent, AgentConfig, Observation, check_trajectory,
                            count_params, observation_to_record, stack_trajectories,
                            zero_trajectory)
from spiral.learner import networks

# All eight action keys (colour, pressure, several brush sizes) on a tiny network.
SMALL = AgentConfig.small(use_color=True)


class ToyPainter:
    """A stand-in environment: `end` paints one pixel (when flag = 1), canvases are k/255."""

    def __init__(self, config: AgentConfig, episode_length: int, seed: int):
        self.config, self.episode_length = config, episode_length
        self.rng = np.random.default_rng(seed)
        self.keys = config.action_keys

    def reset(self):
        self.t = 0
        w, c = self.config.canvas_width, self.config.channels
        self.canvas = np.full((w, w, c), 255, np.uint8)
        return FIRST, 0.0, 0.0, self._obs(painted=False)

    def step(self, action):
        if self.t == self.episode_length - 1:          # after LAST: start a new episode
            return self.reset()
        self.t += 1
        painted = int(action["flag"]) == specs.PAINT
        if painted:
            y, x = specs.grid_to_canvas(int(action["end"]), self.config.grid_width,
                                        self.config.canvas_width)
            self.canvas[int(y), int(x)] = self.rng.integers(0, 255, self.config.channels)
        last = self.t == self.episode_length - 1
        reward = float(self.rng.normal()) if last else 0.0
        return (LAST if last else MID), reward, (0.0 if last else 1.0), self._obs(painted)

    def _obs(self, painted):
        obs = {"canvas": self.canvas.astype(np.float32) / 255.0,
               "action_mask": specs.action_mask(self.keys, painted)}
        if self.config.conditional:
            obs["target"] = np.full_like(obs["canvas"], 128 / 255)
        return obs


def write_observation(record, t, obs, step_type, noise):
    record.observation.canvas[t] = obs.canvas
    record.observation.action_mask[t] = obs.action_mask
    if obs.target is not None:
        record.observation.target[t] = obs.target
    record.step_type[t] = step_type
    record.noise[t] = noise


def collect(agent, params, step, batch_size, unroll_length, episode_lengths, warmup, seed):
    """Run the sampling mode in toy painters and write records as an actor would.

    Env b first runs ``warmup[b]`` steps (so its record may start mid-episode with a non-zero
    recurrent state), then records ``unroll_length`` steps. Returns the stacked batch and the
    per-step sampling outputs (logits, values) to compare with the teacher-forced mode.
    """
    envs = [ToyPainter(agent.config, episode_lengths[b], seed + b) for b in range(batch_size)]
    rng = jax.random.PRNGKey(seed)
    state = agent.initial_state(batch_size)
    first = [env.reset() for env in envs]
    step_type = np.array([f[0] for f in first])
    obs = [observation_to_record(f[3]) for f in first]
    noise = np.zeros((batch_size, agent.config.noise_dim), np.float32)
    records = [zero_trajectory(agent.config, unroll_length) for _ in range(batch_size)]
    sampled_logits, sampled_values = [], []
    for g in range(max(warmup) + unroll_length):      # g: global step; env b records g - warmup[b]
        rng, noise_key, sample_key = jax.random.split(rng, 3)
        fresh = np.asarray(agent.sample_noise(noise_key, batch_size))
        noise = np.where((step_type == FIRST)[:, None], fresh, noise)   # new episode, new noise
        for b in range(batch_size):
            r = g - warmup[b]
            if r == 0:   # the state before observation 0
                records[b] = records[b]._replace(
                    initial_state=jax.tree.map(lambda x: np.array(x[b]), state))
            if 0 <= r <= unroll_length:
                write_observation(records[b], r, obs[b], step_type[b], noise[b])
        batch_obs = jax.tree.map(lambda *xs: np.stack(xs), *obs)
        out, state = step(params, batch_obs, jnp.asarray(step_type == FIRST), state,
                          jnp.asarray(noise), sample_key)
        sampled_logits.append(jax.tree.map(np.asarray, out.logits))
        sampled_values.append(np.asarray(out.value))
        action = jax.tree.map(np.asarray, out.action)
        for b in range(batch_size):
            st, reward, discount, o = envs[b].step({k: v[b] for k, v in action.items()})
            r = g - warmup[b]
            if 0 <= r < unroll_length:
                rec = records[b]
                for k in agent.action_keys:
                    rec.action[k][r] = action[k][b]
                    rec.behaviour_logits[k][r] = out.logits[k][b]
                rec.reward[r], rec.discount[r] = reward, discount
            step_type[b], obs[b] = st, observation_to_record(o)
    # The bootstrap observations (and their values, for the comparison).
    rng, noise_key, sample_key = jax.random.split(rng, 3)
    fresh = np.asarray(agent.sample_noise(noise_key, batch_size))
    noise = np.where((step_type == FIRST)[:, None], fresh, noise)
    batch_obs = jax.tree.map(lambda *xs: np.stack(xs), *obs)
    out, _ = step(params, batch_obs, jnp.asarray(step_type == FIRST), state, jnp.asarray(noise),
                  sample_key)
    sampled_values.append(np.asarray(out.value))
    g = max(warmup) + unroll_length
    for b in range(batch_size):
        if g - warmup[b] == unroll_length:
            write_observation(records[b], unroll_length, obs[b], step_type[b], noise[b])
    return stack_trajectories(records), sampled_logits, sampled_values


def test_parameter_count_matches_the_released_layout():
    """Count the released agent's layers by hand (SPIRAL.md §2) and compare."""
    def released_count(use_color):
        keys = specs.action_keys(specs.DEFAULT_BRUSH_SIZES, use_color, True)
        sizes = {k: s.num_values for k, s in specs.action_spec(32, use_color=use_color).items()}
        c_in = (3 if use_color else 1) + 2
        dense = lambda i, o: i * o + o
        conv = lambda k, i, o: k * k * i * o + o
        res_stack = 8 * (conv(3, 32, 32) + conv(1, 32, 32))
        embed = lambda k: dense(2 if k in specs.LOCATION_KEYS else sizes[k], 16)
        torso = (conv(5, c_in, 32) + sum(embed(k) for k in keys)
                 + dense(16 * len(keys), 64) + dense(64, 32) + dense(32, 32)      # action MLP
                 + dense(10, 64) + dense(64, 32) + dense(32, 32)                   # noise MLP
                 + 3 * conv(4, 32, 32) + conv(3, 32, 32) + res_stack + dense(2048, 256))
        lstm = 4 * 256 * (256 + 256) + 4 * 256
        decoder = conv(3, 16, 32) + res_stack + 3 * conv(4, 32, 32) + conv(3, 32, 1)
        head_mlp = dense(256 + 16, 16) + dense(16, 32) + dense(32, 256)
        head = sum(decoder if k in specs.LOCATION_KEYS else dense(256, sizes[k]) for k in keys)
        head += sum(embed(k) + head_mlp for k in keys)   # the released agent: every key
        return torso + lstm + head + dense(256, 1), embed(keys[-1]) + head_mlp

    for use_color, measured in ((False, 1_551_141), (True, 1_613_329)):
        released, last_key_update = released_count(use_color)
        assert released == measured   # SPIRAL.md's figures for a Flax model of the released agent
        agent = Agent(AgentConfig(use_color=use_color))
        params = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
        # Ours omits the unused embedding + residual MLP after the last key.
        assert count_params(params) == released - last_key_update
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.fixture(scope="module")
def small_agent():
    agent = Agent(SMALL)
    return agent, agent.init(jax.random.PRNGKey(42))


@pytest.fixture(scope="module")
def small_step(small_agent):
    """One jitted sampling step shared by the tests (they use batch 3: one compilation)."""
    return jax.jit(small_agent[0].sample_step)


def test_init_follows_lecun_normal_and_forget_bias(small_agent):
    agent, params = small_agent
    kernel = np.asarray(params["torso"]["linear"]["kernel"])   # fan_in 8·8·8 = 512
    assert kernel.shape == (512, SMALL.torso_output_size)
    assert abs(kernel.std() * np.sqrt(512) - 1.0) < 0.05
    assert np.abs(kernel).max() <= 2.0 / 0.8796 / np.sqrt(512) + 1e-6   # truncated at 2σ
    bias = np.asarray(params["core"]["gates"]["bias"])
    h = SMALL.lstm_size
    np.testing.assert_array_equal(bias[2 * h:3 * h], 1.0)
    assert not bias[:2 * h].any() and not bias[3 * h:].any()
    # Different layers get different draws.
    k1 = np.asarray(params["head"]["end_decoder"]["final"]["kernel"]).ravel()
    k2 = np.asarray(params["head"]["control_decoder"]["final"]["kernel"]).ravel()
    assert not np.allclose(k1, k2)


def test_teacher_forced_logits_equal_sampling_logits(small_agent, small_step):
    agent, params = small_agent
    t_len, b = 6, 3
    # env 0: episodes of 4 observations, starts at FIRST (so a boundary inside the unroll);
    # env 1: starts mid-episode after 2 warm-up steps (non-zero initial state);
    # env 2: one long episode.
    batch, logits, values = collect(agent, params, small_step, b, t_len, episode_lengths=(4, 5, 20),
                                            warmup=(0, 2, 0), seed=1)
    assert check_trajectory(batch, SMALL) == (b, t_len)
    assert batch.step_type[0, 0] == FIRST and batch.step_type[1, 0] == MID
    assert (batch.step_type[0] == LAST).any() and (batch.step_type[0, 1:] == FIRST).any()
    assert np.abs(batch.initial_state.lstm.hidden[1]).max() > 0   # env 1 carries a real state

    tm = jax.tree.map(lambda x: jnp.swapaxes(jnp.asarray(x), 0, 1),
                      (batch.observation, batch.step_type, batch.action, batch.noise))
    init_state = jax.tree.map(jnp.asarray, batch.initial_state)
    out = jax.jit(agent.unroll)(params, tm[0], tm[1] == FIRST, tm[2], init_state, tm[3])
    assert out.values.shape == (t_len + 1, b)
    warm = (0, 2, 0)
    for env in range(b):
        for t in range(t_len):
            s = t + warm[env]   # the global sampling step of record step t
            for k in agent.action_keys:
                np.testing.assert_allclose(out.logits[k][t, env], logits[s][k][env], atol=1e-5,
                                           rtol=0, err_msg=f"key {k} env {env} t {t}")
                np.testing.assert_allclose(out.logits[k][t, env],
                                           batch.behaviour_logits[k][env, t], atol=1e-5, rtol=0)
        for t in range(t_len + 1):
            np.testing.assert_allclose(out.values[t, env], values[t + warm[env]][env], atol=1e-5,
                                       rtol=0)


def test_heads_are_autoregressive_in_spec_order(small_agent):
    """A key's logits depend on the keys sampled before it (spec order), never on later ones."""
    agent, params = small_agent
    assert agent.action_keys == specs.action_keys(SMALL.brush_sizes, True, True)
    t_len, b = 1, 3
    rng = np.random.default_rng(0)
    obs = Observation(jnp.asarray(rng.integers(0, 256, (t_len + 1, b, 16, 16, 3)), jnp.uint8),
                      jnp.ones((t_len + 1, b, len(SMALL.action_keys))))
    action = {k: jnp.asarray(rng.integers(0, n, (t_len, b)), jnp.int32)
              for k, n in SMALL.action_sizes.items()}
    unroll = jax.jit(agent.unroll)
    args = (jnp.zeros((t_len + 1, b), bool).at[0].set(True), )
    base = unroll(params, obs, *args, action, agent.initial_state(b),
                  jnp.zeros((t_len + 1, b, SMALL.noise_dim)))
    keys = agent.action_keys
    for i, changed in enumerate(keys[:-1]):
        other = dict(action)
        other[changed] = (action[changed] + 1) % SMALL.action_sizes[changed]
        out = unroll(params, obs, *args, other, agent.initial_state(b),
                     jnp.zeros((t_len + 1, b, SMALL.noise_dim)))
        for j, k in enumerate(keys):
            same = np.array_equal(out.logits[k], base.logits[k])
            assert same == (j <= i), (changed, k)


def test_first_resets_state_and_previous_action(small_agent, small_step):
    agent, params = small_agent
    b = 3
    rng = np.random.default_rng(0)
    obs = Observation(jnp.asarray(rng.integers(0, 256, (b, 16, 16, 3)), jnp.uint8),
                      jnp.asarray(np.tile(specs.action_mask(SMALL.action_keys, True), (b, 1))))
    noise = agent.sample_noise(jax.random.PRNGKey(1), b)
    zero = agent.initial_state(b)
    junk = jax.tree.map(lambda x: jnp.asarray(rng.integers(1, 4, x.shape), x.dtype), zero)
    step = small_step
    key = jax.random.PRNGKey(2)
    out_zero, _ = step(params, obs, jnp.ones(b, bool), zero, noise, key)
    out_junk, _ = step(params, obs, jnp.ones(b, bool), junk, noise, key)
    for k in agent.action_keys:
        np.testing.assert_array_equal(out_zero.logits[k], out_junk.logits[k])
    # Without the reset the state matters.
    out_mid, _ = step(params, obs, jnp.zeros(b, bool), junk, noise, key)
    assert not np.allclose(out_mid.logits["flag"], out_zero.logits["flag"])


def test_sampling_follows_the_logits(small_agent):
    """Sampled sub-actions are distributed as softmax(logits) (here the first key, flag, and
    size, whose logits depend on the sampled flag/end/control only through z)."""
    agent, params = small_agent
    b = 4000
    obs = Observation(jnp.full((b, 16, 16, 3), 255, jnp.uint8),
                      jnp.asarray(np.tile(specs.action_mask(SMALL.action_keys, False), (b, 1))))
    noise = jnp.zeros((b, SMALL.noise_dim))
    out, new_state = jax.jit(agent.sample_step)(params, obs, jnp.ones(b, bool),
                                                agent.initial_state(b), noise,
                                                jax.random.PRNGKey(3))
    p_flag = np.asarray(jax.nn.softmax(out.logits["flag"][0]))
    freq = np.mean(np.asarray(out.action["flag"]) == 1)
    assert abs(freq - p_flag[1]) < 4 * np.sqrt(p_flag[1] * p_flag[0] / b)
    # Each key is sampled from its own logits: the expected log-likelihood of the samples under
    # the per-sample logits matches -entropy (it would not if samples ignored the logits).
    for k in ("end", "size"):
        logp = np.asarray(jax.nn.log_softmax(out.logits[k]))
        a = np.asarray(out.action[k])
        ll = logp[np.arange(b), a].mean()
        neg_ent = (np.exp(logp) * logp).sum(-1).mean()
        assert abs(ll - neg_ent) < 0.1, k
    # The next state carries the sampled action as the previous action.
    for k in agent.action_keys:
        np.testing.assert_array_equal(new_state.prev_action[k], out.action[k])


def test_location_embedding_is_row_major_y_then_x():
    w = 8
    index = jnp.array([0, 7, 8, 63])
    emb = np.asarray(networks.embed_sub_action("end", index, w * w, w))
    y, x = specs.grid_to_canvas(np.asarray(index), w, w)   # canvas == grid: cell coordinates
    np.testing.assert_allclose(emb[:, 0], -1 + 2 * y / (w - 1))
    np.testing.assert_allclose(emb[:, 1], -1 + 2 * x / (w - 1))
    np.testing.assert_allclose(emb[1], [-1.0, 1.0])    # index 7: top row, right-most column


def conv_transpose_scatter(x, kernel):
    """Reference transposed conv by scattering: input pixel i adds x[i]·K[j] to output 2i+2−j
    (lax.conv_transpose's SAME convention for a 4×4 kernel, stride 2), in float64 numpy."""
    n, h, w, _ = x.shape
    out = np.zeros((n, 2 * h + 4, 2 * w + 4, kernel.shape[-1]))   # 2 cells of margin each side
    for i in range(h):
        for j in range(w):
            for u in range(4):
                for v in range(4):
                    out[:, 2 * i + 2 - u + 2, 2 * j + 2 - v + 2] += x[:, i, j] @ kernel[u, v]
    return out[:, 2:2 + 2 * h, 2:2 + 2 * w]


def test_transposed_conv_forms_agree_with_scatter_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
    want = conv_transpose_scatter(x.astype(np.float64), kernel.astype(np.float64))
    direct = np.asarray(networks.conv_transpose_direct(jnp.asarray(x), jnp.asarray(kernel)))
    d2s = np.asarray(networks.conv_transpose_depth_to_space(jnp.asarray(x), jnp.asarray(kernel)))
    assert direct.shape == (2, 8, 8, 5)
    np.testing.assert_allclose(direct, want, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(d2s, want, atol=1e-4, rtol=1e-5)
    # Same function, same parameters: the kernel gradients agree too.
    g = rng.normal(size=want.shape).astype(np.float32)
    grad = lambda f: jax.grad(lambda k: jnp.sum(f(jnp.asarray(x), k) * g))(jnp.asarray(kernel))
    np.testing.assert_allclose(grad(networks.conv_transpose_direct),
                               grad(networks.conv_transpose_depth_to_space), atol=1e-4, rtol=1e-5)


def test_depth_to_space_decoder_gives_the_same_logits(small_agent):
    """The location decoder with either transposed-conv form, on the agent's own parameters."""
    agent, params = small_agent
    decoder = lambda impl: networks.LocationDecoder(
        SMALL.grid_width, SMALL.decoder_channels, SMALL.decoder_residual_blocks, impl)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, SMALL.lstm_size))
    variables = {"params": params["head"]["end_decoder"]}
    direct = decoder("direct").apply(variables, z)
    d2s = decoder("depth_to_space").apply(variables, z)
    assert direct.shape == (3, SMALL.grid_width ** 2)
    np.testing.assert_allclose(direct, d2s, atol=1e-5, rtol=0)
    assert Agent(SMALL, transposed_conv="depth_to_space").transposed_conv == "depth_to_space"
    with pytest.raises(ValueError, match="transposed_conv"):
        Agent(SMALL, transposed_conv="fft")


def test_conditional_agent_sees_the_target():
    config = AgentConfig.small(conditional=True, use_pressure=False)
    agent = Agent(config)
    params = agent.init(jax.random.PRNGKey(0))
    plain = jax.eval_shape(Agent(AgentConfig.small(use_pressure=False)).init, jax.random.PRNGKey(0))
    # Only the 5×5 input conv grows: C target channels × 25 taps × torso channels.
    assert count_params(params) - count_params(plain) == 1 * 25 * config.torso_channels
    b = 2
    canvas = jnp.full((b, 16, 16, 1), 255, jnp.uint8)
    mask = jnp.ones((b, len(config.action_keys)))
    step = jax.jit(agent.sample_step)
    rest = (jnp.ones(b, bool), agent.initial_state(b), jnp.zeros((b, config.noise_dim)),
            jax.random.PRNGKey(0))
    out_a, _ = step(params, Observation(canvas, mask, jnp.zeros_like(canvas)), *rest)
    out_b, _ = step(params, Observation(canvas, mask, jnp.full_like(canvas, 255)), *rest)
    assert not np.allclose(out_a.logits["end"], out_b.logits["end"])
    with pytest.raises(ValueError, match="target"):
        step(params, Observation(canvas, mask), *rest)


def test_uint8_and_float_canvases_give_the_same_input(small_agent):
    """Records hold uint8 canvases, the environment float32 k/255: the agent sees the same floats."""
    agent, _ = small_agent
    rng = np.random.default_rng(5)
    canvas_u8 = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    canvas_f = canvas_u8.astype(np.float32) / np.float32(255.0)
    mask = jnp.ones((2, len(SMALL.action_keys)))
    image_u8 = agent._image(Observation(jnp.asarray(canvas_u8), mask))
    image_f = agent._image(Observation(jnp.asarray(canvas_f), mask))
    assert image_u8.dtype == jnp.float32
    np.testing.assert_array_equal(image_u8, image_f)


def test_sample_step_rejects_wrong_shapes(small_agent):
    agent, params = small_agent
    b = 2
    state, noise = agent.initial_state(b), jnp.zeros((b, SMALL.noise_dim))
    good_mask = jnp.ones((b, len(SMALL.action_keys)))
    with pytest.raises(ValueError, match="canvas"):
        agent.sample_step(params, Observation(jnp.zeros((b, 64, 64, 3), jnp.uint8), good_mask),
                          jnp.ones(b, bool), state, noise, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="action_mask"):
        agent.sample_step(params, Observation(jnp.zeros((b, 16, 16, 3), jnp.uint8),
                                              jnp.ones((b, 3))),
                          jnp.ones(b, bool), state, noise, jax.random.PRNGKey(0))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="canvas_width"):
        AgentConfig(canvas_width=48)
    with pytest.raises(ValueError, match="grid_width"):
        AgentConfig(grid_width=12)
    with pytest.raises(ValueError, match="lstm_size"):
        AgentConfig(lstm_size=100)


def test_record_helpers():
    config = AgentConfig.small()
    rec = zero_trajectory(config, 5)
    assert rec.observation.canvas.dtype == np.uint8 and rec.observation.canvas.shape == (6, 16, 16, 1)
    assert rec.step_type[0] == FIRST and rec.unroll_length == 5
    assert check_trajectory(rec, config, batched=False) == (1, 5)
    batch = stack_trajectories([rec, zero_trajectory(config, 5)])
    assert check_trajectory(batch, config) == (2, 5)
    with pytest.raises(ValueError, match="shapes"):
        stack_trajectories([rec, zero_trajectory(config, 4)])
    # Float observations convert losslessly; anything not on the k/255 grid is refused.
    canvas = np.arange(256, dtype=np.float32).reshape(16, 16, 1) / 255.0
    obs = observation_to_record({"canvas": canvas, "action_mask": np.ones(4, np.float32)})
    np.testing.assert_array_equal(obs.canvas.ravel(), np.arange(256))
    with pytest.raises(ValueError, match="quantised"):
        observation_to_record({"canvas": canvas * 0.5 + 0.001,
                               "action_mask": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        observation_to_record({"canvas": canvas * 2, "action_mask": np.ones(4, np.float32)})


def test_learner_package_does_not_import_ray():
    code = ("import sys, spiral.learner, spiral.learner.learning, spiral.learner.losses; "
            "print('ray' in sys.modules or any(m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
